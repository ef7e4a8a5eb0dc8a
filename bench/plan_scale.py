"""Plan 10,000 devices over the 8 built-in profiles (target: < 1 s), with the example deployments' models.

    python bench/plan_scale.py [--devices 10000] [--repeat 3]

The fleet is generated in memory (no YAML parsing in the timed part: loading is measured separately and
reported). Prints the table, appends it to docs/benchmarks.md, and ends with one summary line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "agent")]

from bench._report import table, write_section  # noqa: E402
from edgectl.load import load_paths  # noqa: E402
from edgectl.plan import plan  # noqa: E402

def deployments_yaml(tiny_selector: str = "fleet: big") -> str:
    """The example deployments' three catalog models; the small one selects devices by ``tiny_selector``."""
    return f"""\
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {{name: tiny}}
spec: {{model: smollm2-135m-instruct, selector: {{labels: {{{tiny_selector}}}}}, context_length: 2048}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {{name: helper}}
spec: {{model: llama-3.2-1b-instruct, selector: {{labels: {{tier: small}}}}, context_length: 4096}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {{name: assistant}}
spec: {{model: llama-3.2-3b-instruct, selector: {{labels: {{tier: large}}}}, context_length: 4096, parallel: 2}}
"""


def fleet_yaml(n: int, profiles: list[str]) -> str:
    lines = ["apiVersion: edgectl.dev/v1alpha1", "kind: Fleet", "metadata: {name: big}", "spec:", "  devices:"]
    for i in range(n):
        tier = "large" if i % 2 else "small"
        lines.append(f"    - {{name: d{i:05d}, profile: {profiles[i % len(profiles)]}, "
                     f"transport: {{type: ssh, host: d{i:05d}.example}}, labels: {{fleet: big, tier: {tier}}}}}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    profiles = sorted(load_paths([Path(__file__).resolve().parents[1] / "manifests" / "fleet.yaml"]).profiles)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "fleet.yaml").write_text(fleet_yaml(args.devices, profiles))
        (folder / "deployments.yaml").write_text(deployments_yaml())
        t0 = time.perf_counter()
        spec = load_paths([folder])
        load_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        p = plan(spec, {}, {}, {})
        times.append(time.perf_counter() - t0)
    best, worst = min(times), max(times)
    chosen = sum(1 for d in p.devices for dep in d.deployments if dep.chosen is not None)
    rows = [["plan (best of %d)" % args.repeat, f"{best:.3f} s", "< 1 s", "met" if best < 1 else "MISSED"],
            ["plan (worst)", f"{worst:.3f} s", "", ""],
            ["load + validate the YAML", f"{load_s:.1f} s", "-", "measured by bench/manifest_load.py"]]
    body = (f"{args.devices} devices over {len(profiles)} profiles, {len(spec.deployments)} deployments, "
            f"{chosen} artifact choices.\n\n" + table(["step", "wall time", "target", ""], rows))
    print(body)
    write_section("plan_scale", "Plan 10,000 devices", body, dists=("pydantic",))
    print(f"plan_scale: {args.devices} devices planned in {best:.3f} s (target < 1 s: "
          f"{'met' if best < 1 else 'MISSED'}); loading the YAML took {load_s:.1f} s")


if __name__ == "__main__":
    main()
