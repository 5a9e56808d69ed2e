"""The accelerate configs really start several processes on this CPU machine (not silently one)."""

from tests.launch import accelerate_launch, launch_two_nodes


def test_ddp_config_starts_two_processes():
    result = accelerate_launch("ddp.yaml", ["tests/distributed/_allreduce.py"], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ALLREDUCE OK processes=2" in result.stdout


def test_two_loopback_nodes():
    results = launch_two_nodes("ddp.yaml", ["tests/distributed/_allreduce.py"], timeout=300)
    assert [r.returncode for r in results] == [0, 0], results[0].stderr[-2000:] + results[1].stderr[-2000:]
    assert "ALLREDUCE OK processes=2" in results[0].stdout
