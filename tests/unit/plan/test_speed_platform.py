"""Which MLX figure a plan uses is the device's platform's (edgectl/plan/speed.py): the Mac gets the Apple-silicon
(Metal) estimate, a Linux device serving MLX's Linux CPU build gets that build's measured figure, ~30x slower; the
plan's speed basis names the one it used. Through plan(), with the golden cases' fact builder."""

from __future__ import annotations

from pathlib import Path

from edgectl.load import load_paths
from edgectl.plan import plan

from tests.unit.plan.test_golden import make_facts

MANIFESTS = """\
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata: {name: f}
spec:
  devices:
    - {name: mac, profile: apple-silicon-mac, transport: {type: ssh, host: mac.example, install: on-device}}
    - {name: linux-box, profile: auto, transport: {type: local}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {name: chat}
spec: {model: smollm2-135m-instruct, selector: {devices: [mac, linux-box]}}
"""


def test_the_mlx_figure_is_the_devices_platforms(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(MANIFESTS)
    spec = load_paths([tmp_path])
    linux = make_facts({"ram_gb": 24, "cpus": 2, "runtimes": ["mlx"],
                        "benchmark": {"memory_bandwidth_bytes_per_s": 20e9, "compute_flops_per_s": 100e9}})
    p = plan(spec, {"mac": None, "linux-box": linux}, {"mac": None, "linux-box": None}, {},
             devices=["mac", "linux-box"])
    chosen = {dp.device: dp.deployments[0].chosen for dp in p.devices}
    assert chosen["mac"].runtime == chosen["linux-box"].runtime == "mlx"
    mac, box = chosen["mac"].speed, chosen["linux-box"].speed
    assert "MLX figure: Apple silicon (Metal)" in mac.basis
    assert "MLX figure: its Linux CPU build" in box.basis
    assert box.decode_tokens_per_s < 0.05 * mac.decode_tokens_per_s
