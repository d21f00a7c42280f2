"""The torch.fx dependency graph of coupled channels."""

import pytest
import torch
import torch.nn as nn

import lostprune.models as models
from lostprune.structure import GraphError, build_graph


def groups_by_producers(graph):
    return {tuple(sorted(m.module for m in g.producers)): g for g in graph.groups}


def test_resnet20_groups_residual_channels():
    graph = build_graph(models.create("resnet20"), torch.randn(1, 3, 32, 32))
    groups = groups_by_producers(graph)
    # stage 1: the stem and every block's conv2 write the same 16 channels (identity shortcuts)
    stage1 = groups[tuple(sorted(["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]))]
    assert stage1.size == 16 and stage1.coupled and stage1.prunable
    assert {m.module for m in stage1.norms} == {"bn1", "layer1.0.bn2", "layer1.1.bn2", "layer1.2.bn2"}
    # stage 2 starts with a projection shortcut, which joins the group
    assert tuple(sorted(["layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2", "layer2.2.conv2"])) in groups
    inner = groups[("layer1.0.conv1",)]
    assert not inner.coupled and [m.module for m in inner.consumers] == ["layer1.0.conv2"]
    assert not groups[("fc",)].prunable and "output" in groups[("fc",)].reason


def test_flatten_into_linear_gives_spans():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    graph = build_graph(model, torch.randn(1, 3, 8, 8))
    group = groups_by_producers(graph)[("0",)]
    (consumer,) = group.consumers
    assert consumer.module == "3" and consumer.span == 36
    assert torch.equal(consumer.select(torch.tensor([False, True, False, True])),
                       torch.cat([torch.arange(36, 72), torch.arange(108, 144)]))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1)
        self.head = nn.Conv2d(10, 2, 1)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), torch.relu(self.b(x))], dim=1))


def test_concat_offsets_consumer_columns():
    graph = build_graph(Concat(), torch.randn(1, 3, 5, 5))
    groups = groups_by_producers(graph)
    assert groups[("a",)].consumers[0].index.flatten().tolist() == [0, 1, 2, 3]
    assert groups[("b",)].consumers[0].index.flatten().tolist() == [4, 5, 6, 7, 8, 9]


def test_depthwise_conv_joins_its_input_channels():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 4, 1))
    graph = build_graph(model, torch.randn(1, 3, 6, 6))
    group = groups_by_producers(graph)[("0", "2")]
    assert group.prunable and {(m.module, m.role) for m in group.members} == {("0", "out"), ("2", "depthwise"), ("3", "in")}


def test_grouped_conv_freezes_with_reason():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, groups=2), nn.Conv2d(8, 4, 1))
    graph = build_graph(model, torch.randn(1, 3, 6, 6))
    group = groups_by_producers(graph)[("0",)]
    assert not group.prunable and "grouped convolution '1' (groups=2)" in group.reason


class Reuse(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.shared, self.head = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        return self.head(self.shared(torch.relu(self.shared(x))))


def test_module_called_twice_couples_its_channels():
    graph = build_graph(Reuse(), torch.randn(1, 3, 5, 5))
    # shared's output feeds shared again: its input and output channels are the same channels
    group = next(g for g in graph.groups if any(m.module == "shared" and m.role == "out" for m in g.members))
    assert {(m.module, m.role) for m in group.members} >= {("stem", "out"), ("shared", "out"), ("shared", "in")}


class Permute(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        return self.head(y.permute(0, 1, 3, 2))


def test_unsupported_op_is_named():
    graph = build_graph(Permute(), torch.randn(1, 3, 5, 5))
    group = groups_by_producers(graph)[("conv",)]
    assert not group.prunable and "method '.permute()'" in group.reason and "node 'permute'" in group.reason


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Branchy()
        self.head = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.head(self.inner(x))


class Branchy(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x


def test_untraceable_model_names_module_and_suggests_leaf_modules():
    with pytest.raises(GraphError, match=r"inside Branchy.forward.*leaf_modules"):
        build_graph(Untraceable(), torch.randn(1, 3, 4, 4))
    graph = build_graph(Untraceable(), torch.randn(1, 3, 4, 4), leaf_modules=[Branchy])
    assert all(not g.prunable for g in graph.groups if any(m.module == "head" for m in g.members))


def test_propagation_drops_constant_columns_and_unread_filters():
    from lostprune.core.layers import prunable_layers
    from lostprune.structure.propagation import Propagation

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.Flatten(),
                          nn.Linear(5 * 2 * 2, 3))
    graph = build_graph(model, torch.randn(1, 3, 6, 6))
    layers = prunable_layers(model)
    masks = {"0": torch.ones(4, 3, 3, 3), "3": torch.ones(5, 4, 3, 3), "5": torch.ones(3, 20)}
    masks["0"][1] = 0  # filter 1 of conv 0: conv 3's column 1 reads only its BN shift
    masks["5"][:, 8:12] = 0  # every column of channel 2 of conv 3: that filter is unread
    prop = Propagation(graph, layers, masks)
    final = prop.masks(*prop.propagate(*prop.fresh()), masks)
    assert final["3"][:, 1].sum() == 0 and final["3"][2].sum() == 0
    assert final["3"].sum() == (5 - 1) * (4 - 1) * 9
    assert torch.equal(final["0"], masks["0"]) and torch.equal(final["5"], masks["5"])
    assert prop.kept_weights(*prop.propagate(*prop.fresh())) == sum(int(m.sum()) for m in final.values())
    # with drop_constants=False the constant channel stays read: only the unread filter goes
    kept = prop.masks(*prop.propagate(*prop.fresh(), drop_constants=False), masks)
    assert kept["3"][:, 1].sum() > 0 and kept["3"][2].sum() == 0


@pytest.mark.parametrize("name", ["mobilenet_v2", "densenet121", "deeplabv3_resnet50"])
def test_real_architectures_trace(name):
    model = models.create(name)
    graph = build_graph(model, torch.randn(1, *model.input_size))
    assert sum(g.prunable for g in graph.groups) > 10
    frozen = [g.reason for g in graph.groups if not g.prunable]
    assert all(reason in ("network input", "reaches the network output") for reason in frozen), frozen
