"""Export what edgectl would deploy, for another runtime to run it.

    ollama        ``export_ollama``: the GGUF the plan chooses for one device and deployment, plus a Modelfile that
                  ``ollama create`` accepts (for devices that keep Ollama)
    modelfile.py  writing Modelfiles, and reading them the way Ollama's parser does
    chat_template.py  the GGUF's chat template as the Go template a Modelfile takes, proven equal on sample chats
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from edgectl_agent.gguf_check import check_gguf

from edgectl.builders import ArtifactStore
from edgectl.builders.store import sha256_file
from edgectl.errors import EdgectlError, NotFoundError
from edgectl.export import modelfile
from edgectl.export.chat_template import convert
from edgectl.spec import BuiltArtifact, Spec


@dataclass
class OllamaExport:
    folder: Path
    gguf: Path
    modelfile: Path
    artifact: BuiltArtifact
    name: str  # the model name to give `ollama create`
    notes: list[str] = field(default_factory=list)  # what the Modelfile leaves to Ollama, and why

    @property
    def create_command(self) -> list[str]:
        return ["ollama", "create", self.name, "-f", str(self.modelfile)]


def export_ollama(spec: Spec, device: str, deployment: str | None, folder: Path, store: ArtifactStore,
                  events) -> OllamaExport:
    """Plan ``deployment`` for ``device`` (from the manifests and its profile; a device with profile 'auto' is asked
    for its facts, nothing is started), build its GGUF into
    the store (a cache hit does no work), and write ``folder``/<model>-<quant>.gguf and ``folder``/Modelfile."""
    from edgectl.apply import DeviceContext, build_planned, close_contexts, make_plan, observe, select_devices
    from edgectl.plan import recipe_id
    from edgectl.spec.fleet import AUTO_PROFILE

    dev = select_devices(spec, [device])[0]
    if dev.profile == AUTO_PROFILE:  # its hardware is known only from its agent's facts (nothing is started)
        contexts = observe([dev], start_agents=False)
        close_contexts(contexts)
    else:
        contexts = {dev.name: DeviceContext(dev)}
    p = make_plan(spec, contexts, store)
    dp = p.devices[0]
    deps = {d.deployment: d for d in dp.deployments}
    if deployment is None:
        if len(deps) != 1:
            raise EdgectlError(f"device '{device}' has {len(deps)} deployments planned; say which to export",
                               hint="add --deployment NAME (one of: " + (", ".join(sorted(deps)) or "none") + ")")
        deployment = next(iter(deps))
    if deployment not in deps:
        raise NotFoundError(f"deployment '{deployment}' is not planned for device '{device}'",
                            hint="deployments planned there: " + (", ".join(sorted(deps)) or "none")
                            + "; check the Deployment's selector")
    dep = deps[deployment]
    if dep.chosen is None:
        raise EdgectlError(f"nothing was chosen for '{deployment}' on '{device}': {dep.unfit or dp.hint or 'unfit'}",
                           hint=dep.hint or dp.hint or "run `edgectl plan` to see why")
    recipe = dep.chosen.recipe
    if recipe.format != "gguf":
        raise EdgectlError(f"the plan chose {recipe.format} {recipe.quant} for '{deployment}' on '{device}'; "
                           "Ollama runs GGUF files only",
                           hint="pin the format in the Deployment (spec.quantization.format: gguf) or export for a "
                                "device whose profile prefers GGUF")
    rid = recipe_id(recipe)
    art = build_planned(spec, p, store, events, only={rid})[rid][0]

    folder.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{art.model}-{art.quant}").strip("-.").lower()
    gguf = folder / f"{stem}.gguf"
    _copy_verified(store.local_path(art), gguf, art.digest)

    header = check_gguf(gguf)
    conv = convert(header.chat_template)
    notes: list[str] = []
    if conv.template is None:
        notes.append(f"no TEMPLATE: {conv.reason}; Ollama picks a template from the GGUF's metadata")
    dspec = spec.deployments[deployment].spec
    params = [("num_ctx", str(dspec.context_length))]
    threads = dspec.threads or dp.threads
    if threads:
        params.append(("num_thread", str(threads)))
    params += [("stop", s) for s in conv.stops]
    mf = modelfile.Modelfile(
        from_=f"./{gguf.name}", template=conv.template, system=conv.system, parameters=params,
        comments=[f"written by edgectl export: deployment {deployment}, device {device}",
                  f"{art.model} {art.format} {art.quant}, {art.digest}"] + notes)
    text = modelfile.write(mf)
    _check_round_trip(text, mf)
    path = folder / "Modelfile"
    tmp = path.with_suffix(".part")
    tmp.write_text(text)
    os.replace(tmp, path)
    return OllamaExport(folder=folder, gguf=gguf, modelfile=path, artifact=art, name=deployment, notes=notes)


def _copy_verified(src: Path, dest: Path, digest: str) -> None:
    """``src`` to ``dest`` (a hard link where the file system allows, else a copy), checked against ``digest``."""
    tmp = dest.with_suffix(".part")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    got = sha256_file(tmp)
    if got != digest:
        tmp.unlink(missing_ok=True)
        raise EdgectlError(f"the store's copy of {digest} reads as {got}: the local store is damaged",
                           hint="remove the artifact from the store (or the whole store) and run the export again")
    os.replace(tmp, dest)
    tmp.unlink(missing_ok=True)  # rename() does nothing when both names are links to one file (a re-export)


def _check_round_trip(text: str, mf: modelfile.Modelfile) -> None:
    """Ollama's parser must read back what was meant (a value it would cut short is a bug here, not a user's)."""
    read = modelfile.parse(text)
    expect = [("model", mf.from_)] + ([("template", mf.template)] if mf.template is not None else []) \
        + ([("system", mf.system)] if mf.system is not None else []) + list(mf.parameters)
    if read != expect:
        raise EdgectlError("the Modelfile edgectl wrote does not read back as written",
                           hint="report this with the model's chat template; write the Modelfile by hand meanwhile")
