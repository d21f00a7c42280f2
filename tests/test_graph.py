"""The torch.fx dependency graph of coupled channels."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import lostprune
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
    assert (
        tuple(sorted(["layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2", "layer2.2.conv2"])) in groups
    )
    inner = groups[("layer1.0.conv1",)]
    assert not inner.coupled and [m.module for m in inner.consumers] == ["layer1.0.conv2"]
    assert not groups[("fc",)].prunable and "output" in groups[("fc",)].reason


def test_flatten_into_linear_gives_spans():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    graph = build_graph(model, torch.randn(1, 3, 8, 8))
    group = groups_by_producers(graph)[("0",)]
    (consumer,) = group.consumers
    assert consumer.module == "3" and consumer.span == 36
    assert torch.equal(
        consumer.index[torch.tensor([False, True, False, True])].reshape(-1),
        torch.cat([torch.arange(36, 72), torch.arange(108, 144)]),
    )


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
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 4, 1)
    )
    graph = build_graph(model, torch.randn(1, 3, 6, 6))
    group = groups_by_producers(graph)[("0", "2")]
    assert group.prunable and {(m.module, m.role) for m in group.members} == {
        ("0", "out"),
        ("2", "depthwise"),
        ("3", "in"),
    }


def test_grouped_conv_removes_channel_j_of_every_group_together():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 6, 3, groups=2), nn.Conv2d(6, 4, 1))
    graph = build_graph(model, torch.randn(1, 3, 6, 6))
    before = groups_by_producers(graph)[("0",)]  # 8 channels in 2 groups of 4: 4 units of 2
    assert before.prunable and before.size == 4
    members = {m.module: m.index.tolist() for m in before.members}
    assert members["0"][1] == [1, 5] and members["1"][1] == [1]  # rows 1 and 5; weight column 1
    after = groups_by_producers(graph)[("1",)]  # 6 outputs in 2 groups of 3
    assert after.size == 3 and {m.module: m.index.tolist() for m in after.members}["2"][0] == [0, 3]


class Reuse(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.shared, self.head = (
            nn.Conv2d(3, 6, 1),
            nn.Conv2d(6, 6, 3, padding=1),
            nn.Conv2d(6, 2, 1),
        )

    def forward(self, x):
        x = torch.relu(self.stem(x))
        return self.head(self.shared(torch.relu(self.shared(x))))


def test_module_called_twice_couples_its_channels():
    graph = build_graph(Reuse(), torch.randn(1, 3, 5, 5))
    # shared's output feeds shared again: its input and output channels are the same channels
    group = next(g for g in graph.groups if any(m.module == "shared" and m.role == "out" for m in g.members))
    assert {(m.module, m.role) for m in group.members} >= {
        ("stem", "out"),
        ("shared", "out"),
        ("shared", "in"),
    }


class Cumsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        return self.head(y.cumsum(1))


def test_unsupported_op_is_named():
    graph = build_graph(Cumsum(), torch.randn(1, 3, 5, 5))
    group = groups_by_producers(graph)[("conv",)]
    assert not group.prunable and "method '.cumsum()'" in group.reason and "node 'cumsum'" in group.reason


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

    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3),
        nn.Flatten(),
        nn.Linear(5 * 2 * 2, 3),
    )
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


# ----------------------------------------------------------------------------- ops the graph and propagation follow
from lostprune.core.layers import prunable_layers  # noqa: E402
from lostprune.structure.propagation import Propagation  # noqa: E402


def propagated(model, x, masks):
    """The masks after propagation, from ``masks`` ({layer: mask}; other layers dense)."""
    layers = prunable_layers(model)
    current = {name: masks.get(name, torch.ones_like(layer.weight)) for name, layer in layers.items()}
    prop = Propagation(build_graph(model, x), layers, current)
    return prop.masks(*prop.propagate(*prop.fresh()), current)


def members_of(group):
    return {(m.module, m.role): m for m in group.members}


class ChannelsLast(nn.Module):
    """A ConvNeXt-like block without its LayerNorm: permute to channels-last, linear layers
    over the last dim, a layer scale, permute back, a residual add."""

    def __init__(self, norm: bool = False):
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 2, 1)
        self.norm = nn.LayerNorm(8) if norm else nn.Identity()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.scale = nn.Parameter(torch.rand(8, 1, 1) + 0.5)

    def forward(self, x):
        x = self.stem(x)
        y = self.fc2(F.gelu(self.fc1(self.norm(x.permute(0, 2, 3, 1)))))
        return self.head(x + self.scale * y.transpose(1, 3).transpose(2, 3))


def test_channels_follow_permute_transpose_linear_and_layer_scale():
    graph = build_graph(ChannelsLast(), torch.randn(1, 3, 5, 5))
    hidden = groups_by_producers(graph)[("fc1",)]
    assert (
        hidden.prunable and hidden.size == 16 and set(members_of(hidden)) == {("fc1", "out"), ("fc2", "in")}
    )
    stream = groups_by_producers(graph)[("fc2", "stem")]
    assert stream.prunable and stream.size == 8
    scale = members_of(stream)[("scale", "param")]
    assert scale.dim == 0 and scale.index.flatten().tolist() == list(range(8))
    assert {("fc1", "in"), ("head", "in")} <= set(members_of(stream))
    # propagation through the same ops: a dead fc1 filter is dropped by fc2, an unread one goes
    masks = {"fc1": torch.ones(16, 8), "fc2": torch.ones(8, 16)}
    masks["fc1"][3] = 0
    masks["fc2"][:, 5] = 0
    final = propagated(ChannelsLast(), torch.randn(1, 3, 5, 5), masks)
    assert final["fc2"][:, 3].sum() == 0 and final["fc1"][5].sum() == 0 and final["fc1"].sum() == 14 * 8


def test_layer_norm_over_the_channels_freezes_them():
    graph = build_graph(ChannelsLast(norm=True), torch.randn(1, 3, 5, 5))
    stream = groups_by_producers(graph)[("fc2", "stem")]
    assert not stream.prunable and "LayerNorm module 'norm'" in stream.reason
    assert groups_by_producers(graph)[("fc1",)].prunable  # the hidden units are not normalized


class Shuffle(nn.Module):
    """ShuffleNet's unit: chunk the channels, convolve one half, concat, channel shuffle."""

    def __init__(self):
        super().__init__()
        self.stem, self.branch, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        a, b = self.stem(x).chunk(2, dim=1)
        y = torch.cat([a, self.branch(b)], dim=1)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(y)


def test_chunk_and_channel_shuffle_remove_matching_channels_together():
    graph = build_graph(Shuffle(), torch.randn(1, 3, 4, 4))
    stem = groups_by_producers(graph)[("branch", "stem")]
    members = members_of(stem)
    # chunk: channel i of each half goes together; the shuffle pairs them with the branch's
    assert stem.prunable and stem.size == 4
    assert members[("stem", "out")].index.tolist()[1] == [1, 5]
    assert members[("branch", "in")].index.tolist()[1] == [1]
    assert members[("head", "in")].index.tolist()[1] == [2, 3]  # shuffled: a1 -> 2, branch1 -> 3
    # propagation: a stem filter nobody reads any more goes; a dead one is dropped by its reader
    masks = {"stem": torch.ones(8, 3, 1, 1), "branch": torch.ones(4, 4, 1, 1), "head": torch.ones(2, 8, 1, 1)}
    masks["head"][:, 4] = 0  # shuffled position 4 = a2 = stem filter 2
    masks["stem"][5] = 0  # b1: branch's column 1 reads a constant
    final = propagated(Shuffle(), torch.randn(1, 3, 4, 4), masks)
    assert final["stem"][2].sum() == 0 and final["branch"][:, 1].sum() == 0


class Literal(nn.Module):
    def __init__(self, split: bool):
        super().__init__()
        self.split = split
        self.stem, self.head = nn.Conv2d(3, 8, 1), nn.Linear(8, 2)
        self.head_a, self.head_b = nn.Conv2d(3, 2, 1), nn.Conv2d(5, 2, 1)

    def forward(self, x):
        y = self.stem(x)
        if self.split:
            a, b = torch.split(y, [3, 5], dim=1)
            return self.head_a(a) + self.head_b(b)
        return self.head(y.view(y.shape[0], 8, -1).mean(2))


@pytest.mark.parametrize("split", [False, True])
def test_sizes_written_in_the_code_freeze_the_channels(split):
    group = groups_by_producers(build_graph(Literal(split), torch.randn(1, 3, 4, 4)))[("stem",)]
    assert not group.prunable and "written in the model's code" in group.reason


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Linear(6, 16), nn.Linear(16, 3)
        self.attn = lostprune.structure.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x):
        h = self.embed(x)
        return self.head(self.attn(h, h, h, need_weights=False)[0])


def test_attention_heads_are_groups_in_graph_and_propagation():
    x = torch.randn(1, 5, 6)
    graph = build_graph(Attention(), x)
    heads = groups_by_producers(graph)[("attn.in_proj",)]
    members = members_of(heads)
    assert heads.prunable and heads.size == 4
    # head 1: its q, k and v rows, its 4 columns of the output projection
    assert members[("attn.in_proj", "out")].index[1].tolist() == [4, 5, 6, 7, 20, 21, 22, 23, 36, 37, 38, 39]
    assert members[("attn.out_proj", "in")].index[1].tolist() == [4, 5, 6, 7]
    # propagation: the output projection no longer reads head 1, so its q, k, v rows go
    masks = {"attn.out_proj": torch.ones(16, 16)}
    masks["attn.out_proj"][:, 4:8] = 0
    final = propagated(Attention(), x, masks)
    rows = (final["attn.in_proj"] != 0).any(1)
    assert not rows[members[("attn.in_proj", "out")].index[1]].any() and rows.sum() == 36


class PooledBranch(nn.Module):
    """Inception's pool branch: an average pool with zero padding between a filter and its reader."""

    def __init__(self):
        super().__init__()
        self.a, self.bn, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.b(F.avg_pool2d(torch.relu(self.bn(self.a(x))), 3, stride=1, padding=1))


def test_a_constant_through_zero_padding_is_still_dropped():
    """What a removed filter leaves does not depend on the input, border or not: its reader
    drops it (else the per-layer variant keeps channels slicing cannot remove)."""
    masks = {"a": torch.ones(4, 3, 3, 3)}
    masks["a"][1] = 0
    assert propagated(PooledBranch(), torch.randn(1, 3, 6, 6), masks)["b"][:, 1].sum() == 0
