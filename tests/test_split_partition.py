"""Class partition and device assignment: every class exactly once, balanced, budgets respected."""
import pytest
import torch

from edgevit.errors import UsageError
from edgevit.split.devices import Device, assign, parse_devices, plan_budgets, plan_costs
from edgevit.split.partition import confusion_matrix, partition_classes, within_confusion


def block_confusion(blocks, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(k, k, generator=g) * 0.01
    for b in blocks:
        c[torch.tensor(b)[:, None], torch.tensor(b)[None, :]] += 0.2
    return c


@pytest.mark.parametrize("k,n", [(10, 1), (10, 3), (10, 4), (10, 10), (7, 2), (100, 6)])
def test_every_class_exactly_once_and_balanced(k, n):
    groups = partition_classes(torch.rand(k, k, generator=torch.Generator().manual_seed(k + n)), n)
    flat = sorted(c for g in groups for c in g)
    assert flat == list(range(k))
    sizes = [len(g) for g in groups]
    assert max(sizes) - min(sizes) <= 1 and len(groups) == n


def test_confused_classes_end_up_together():
    blocks = [[0, 5, 7], [1, 3, 9], [2, 4], [6, 8]]
    groups = partition_classes(block_confusion(blocks, 10), 4)
    assert sorted(map(sorted, groups)) == sorted(map(sorted, blocks))


def test_partition_beats_a_naive_split_and_is_deterministic():
    c = torch.rand(10, 10, generator=torch.Generator().manual_seed(3))
    groups = partition_classes(c, 3)
    naive = [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert sum(within_confusion(c, groups)) >= sum(within_confusion(c, naive))
    assert partition_classes(c, 3) == groups


def test_confusion_matrix_rows_are_distributions():
    logits = torch.randn(50, 4)
    y = torch.arange(50) % 4
    c = confusion_matrix(logits, y, 4)
    assert torch.allclose(c.sum(1), torch.ones(4), atol=1e-5)


def test_too_many_subsets_rejected():
    with pytest.raises(ValueError):
        partition_classes(torch.rand(3, 3), 4)


def test_parse_device_count_and_yaml(tmp_path):
    assert [d.name for d in parse_devices("3")] == ["device0", "device1", "device2"]
    f = tmp_path / "d.yaml"
    f.write_text("devices:\n  - {name: jetson, memory_mb: 8, compute: 2.0}\n  - {name: pi5, memory_mb: 1}\n")
    devs = parse_devices(str(f))
    assert devs == [Device("jetson", 8.0, 2.0), Device("pi5", 1.0, 1.0)]
    assert devs[1].ray_resource == "edgevit-device-pi5"


@pytest.mark.parametrize("text,needle", [
    ("devices: []", "non-empty"),
    ("devices:\n  - {name: a, memory_mb: -1}", "positive"),
    ("devices:\n  - {name: a, speed: 2}", "unknown key"),
    ("devices:\n  - {name: a}\n  - {name: a}", "unique"),
    ("devices:\n  - {name: a, runtime: tflite}", "runtime"),
    ("devices: [", "YAML"),
])
def test_bad_device_files_name_the_problem(tmp_path, text, needle):
    f = tmp_path / "d.yaml"
    f.write_text(text)
    with pytest.raises(UsageError, match=needle):
        parse_devices(str(f))


def test_bad_device_count():
    with pytest.raises(UsageError):
        parse_devices("0")
    with pytest.raises(UsageError, match="neither"):
        parse_devices("four")


def test_budgets_follow_compute_and_respect_memory():
    devs = [Device("fast", None, 2.0), Device("slow", None, 1.0), Device("tiny", 0.1, 2.0)]
    b = plan_budgets(devs, 1_000_000, 0.2, 1000)
    assert b[0] == 200_000 and b[1] == 100_000
    assert b[2] * 4 <= 0.1e6           # memory cap: 0.1 MB of fp32 weights
    with pytest.raises(UsageError, match="tiny"):
        plan_budgets(devs, 1_000_000, 0.2, 30_000)


def test_cost_budgets_follow_compute_and_name_an_infeasible_device():
    devs = [Device("fast", None, 2.0), Device("slow", None, 0.5)]
    c = plan_costs(devs, 1_000_000, 0.3, 1000)
    assert c == [300_000, 75_000]             # equal expected latency: cost / compute is the same
    with pytest.raises(UsageError, match="slow cannot meet --latency"):
        plan_costs(devs, 1_000_000, 0.3, 100_000)


def test_assignment_hardest_subset_to_largest_budget():
    where = assign([0.1, 0.9, 0.5], [100, 300, 200])
    assert sorted(where) == [0, 1, 2]                   # a bijection
    assert where[1] == 1 and where[2] == 2 and where[0] == 0
