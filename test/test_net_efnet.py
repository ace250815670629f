"""EFNet: complexity pins, DBTC clustering/merging, importance in attention, MFAD distance decoder, ONNX."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rgbt_seg_ros.errors import RgbtSegError
from rgbt_seg_ros.networks import create_network, get_network_spec
from rgbt_seg_ros.networks.complexity import network_complexity
from rgbt_seg_ros.networks.efnet import (DBTC, MFAD, ClusterAttention, TokenState, _feature_dist, density_peaks,
                                         map_to_tokens, merge_tokens, tokens_to_map)


def _grid_state(x: torch.Tensor, h: int, w: int) -> TokenState:
    """Stage-1-like state: one token per H/4 pixel, row-major."""
    b = x.shape[0]
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    pos = torch.stack([xs, ys], -1).reshape(1, -1, 2).expand(b, -1, -1)
    ones = torch.ones(b, h * w, 1)
    return TokenState(x, torch.arange(h * w).expand(b, -1), pos, ones, torch.zeros_like(ones), (h, w), h, w)


def test_registry_entry():
    spec = get_network_spec("efnet")
    assert spec.default_variant == "light" and spec.smallest_variant == "tiny"
    assert spec.paper_figures == {"light": (29.5, 36.6)}


def test_complexity_pins_light_at_640x480():
    params_m, gmacs = network_complexity("efnet", "light", 480, 640, num_classes=9)
    # Paper: 29.5 M / 36.6 GMACs. GMACs (FLOPs/2, FlopCounterMode, DPC-kNN distance matmuls included) land
    # within 3 %. Parameters do not: the text's architecture (TCFormer-Light widths/depths — a PVTv2-b1-sized
    # ~13 M backbone — plus TCFormer token convs, MIF, grid skips and a 256-wide MFAD) adds up to ~16 M, and the
    # paper does not say where the other ~13 M sit, so we pin our honest figure instead of padding the net.
    assert params_m == pytest.approx(16.04, abs=0.05)
    assert gmacs == pytest.approx(35.69, rel=0.01)
    assert abs(gmacs / 36.6 - 1) < 0.15
    tiny_params, tiny_gmacs = network_complexity("efnet", "tiny", 480, 640, num_classes=9)
    assert tiny_params < 0.5 and tiny_gmacs < 2.0


def test_density_peaks_separates_two_clumps():
    # Two tight clumps in feature space, far apart; spatial term off (tau=1) → the clusters are the clumps.
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [0.1, 0.1],
                      [5.0, 5.0], [5.1, 5.0], [5.0, 5.1], [5.1, 5.1]]).unsqueeze(0)
    pos = torch.rand(1, 8, 2)
    assign = density_peaks(x, pos, 2, k=3, tau=1.0)[0]
    assert len(set(assign[:4].tolist())) == 1 and len(set(assign[4:].tolist())) == 1
    assert assign[0] != assign[4]


def test_density_peaks_spatial_term_matters_when_tau_low():
    # Features identical: only the spatial distance can split the tokens (left vs right half).
    x = torch.zeros(1, 8, 4)
    pos = torch.tensor([[0.0, 0.0], [0.05, 0.0], [0.0, 0.05], [0.05, 0.05],
                        [0.9, 0.0], [0.95, 0.0], [0.9, 0.05], [0.95, 0.05]]).unsqueeze(0)
    assign = density_peaks(x, pos, 2, k=3, tau=0.3)[0]
    assert len(set(assign[:4].tolist())) == 1 and len(set(assign[4:].tolist())) == 1 and assign[0] != assign[4]


def test_merge_tokens_is_importance_weighted_average():
    x = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [10.0, 10.0]]])
    w = torch.tensor([[[1.0], [3.0], [2.0]]])
    assign = torch.tensor([[0, 0, 1]])
    merged, wsum = merge_tokens(x, w, assign, 2)
    assert torch.allclose(merged[0, 0], torch.tensor([(1 + 9) / 4, (0 + 6) / 4]))
    assert torch.allclose(merged[0, 1], torch.tensor([10.0, 10.0]))
    assert torch.allclose(wsum[0, :, 0], torch.tensor([4.0, 2.0]))


def test_dbtc_reduces_tokens_by_four_and_merges_by_importance():
    torch.manual_seed(0)
    dbtc = DBTC(6, 8, tau=0.3, splits=2, k=5).eval()
    h = w = 8
    x = torch.randn(2, h * w, 6)
    st = _grid_state(x, h, w)
    out = dbtc(st, 1)
    assert out.x.shape == (2, h * w // 4, 8)  # 4 regions × ceil(16/4) clusters
    assert out.idx.shape == (2, h * w) and int(out.idx.max()) < out.x.shape[1]
    assert torch.equal(out.cnt.sum(1).squeeze(-1), torch.full((2,), float(h * w)))
    # Recompute the merge by hand from the module's own projection and scores.
    with torch.no_grad():
        local = F.interpolate(dbtc.conv(x.transpose(1, 2).reshape(2, 6, h, w)), scale_factor=2.0, mode="nearest")
        y = dbtc.norm(dbtc.proj(x) + local.flatten(2).transpose(1, 2))
        weight = torch.exp(dbtc.score(y))
        for b in range(2):
            for j in range(out.x.shape[1]):
                members = (out.idx[b] == j).nonzero().flatten()
                assert len(members) >= 1  # every cluster holds at least its centre
                expect = (weight[b, members] * y[b, members]).sum(0) / weight[b, members].sum()
                assert torch.allclose(out.x[b, j], expect, atol=1e-5)
                # Clusters never cross the 2×2 region grid: all members lie in one 4×4 block.
                rows, cols = members // w, members % w
                assert len(set((rows // 4).tolist())) == 1 and len(set((cols // 4).tolist())) == 1
                assert torch.allclose(out.pos[b, j], st.pos[b, members].mean(0), atol=1e-6)


def test_importance_biases_attention():
    torch.manual_seed(0)
    attn = ClusterAttention(8, 2, sr_ratio=1).eval()
    x = torch.randn(1, 6, 8)
    st = _grid_state(x, 2, 3)
    with torch.no_grad():
        base = attn(x, st, 1)
        imp = torch.zeros(1, 6, 1)
        imp[0, 4] = 30.0  # one overwhelmingly important key: every query reads (almost) only its value
        st.imp = imp
        biased = attn(x, st, 1)
        v = attn.kv(x)[0, 4, 8:]
        only_v4 = attn.proj(v).expand(6, -1)
    assert not torch.allclose(base, biased, atol=1e-3)
    assert torch.allclose(biased[0], only_v4, atol=1e-4)


def test_mfad_logits_are_negative_distances_to_class_tokens():
    torch.manual_seed(0)
    dec = MFAD((4, 4), 6, num_classes=5)
    emb = torch.randn(2, 6, 3, 4)
    logits = dec.distance_logits(emb)
    ref = -torch.cdist(emb.flatten(2).transpose(1, 2), dec.class_tokens.unsqueeze(0).expand(2, -1, -1))
    assert torch.allclose(logits.flatten(2).transpose(1, 2), ref, atol=1e-4)
    probs = logits.softmax(1)
    assert torch.allclose(probs.sum(1), torch.ones(2, 3, 4), atol=1e-6)
    assert (logits.argmax(1) == ref.argmax(-1).reshape(2, 3, 4)).all()  # nearest class token wins


def test_tokens_to_map_paints_pixels_with_their_token():
    x = torch.tensor([[[1.0], [2.0]]])
    idx = torch.tensor([[0, 0, 1, 1, 0, 1, 1, 1]])
    m = tokens_to_map(x, idx, 2, 4)
    assert torch.equal(m[0, 0], torch.tensor([[1.0, 1.0, 2.0, 2.0], [1.0, 2.0, 2.0, 2.0]]))
    assert torch.allclose(tokens_to_map(x, idx, 2, 4, factor=2)[0, 0], torch.tensor([[1.25, 2.0]]))


def test_map_to_tokens_averages_the_pixels_of_each_token():
    idx = torch.tensor([[0, 0, 1, 1, 0, 1, 1, 1]])  # 2×4 pixel grid, token 0 owns 3 pixels, token 1 owns 5
    cnt = torch.tensor([[[3.0], [5.0]]])
    grid = torch.tensor([[[[1.0, 3.0]]]])  # 1×2 map at factor 2: left block 1, right block 3
    tokens = map_to_tokens(grid, idx, cnt, torch.zeros(1, 2, 1), factor=2)
    assert torch.allclose(tokens[0, :, 0], torch.tensor([(1 + 1 + 1) / 3, (3 + 3 + 1 + 3 + 3) / 5]))


def test_identical_tokens_are_exact_ties():
    # Matmul-form distances of identical vectors leave rounding noise; it must be snapped to exactly 0,
    # or tie decisions would depend on the backend's rounding.
    torch.manual_seed(4)  # with this draw the raw |a|² + |b|² − 2a·b of equal rows is ~1e-4, not 0, here
    row = torch.randn(1, 1, 100) * 3 + 1
    x = torch.cat([row.expand(1, 6, 100), torch.randn(1, 10, 100) * 5], 1)
    d = _feature_dist(x)[0]
    assert torch.equal(d[:6, :6], torch.zeros(6, 6))
    assert (d[6:, :6] > 1.0).all()
    # Identical tokens at identical-spacing positions: index decides, the same way on every run.
    pos = torch.rand(1, 16, 2)
    assert torch.equal(density_peaks(x, pos, 4, 3, 1.0), density_peaks(x.clone(), pos.clone(), 4, 3, 1.0))


@pytest.mark.parametrize("aux_channels", [1, 3])
def test_forward_train_eval_odd_size(aux_channels):
    torch.manual_seed(0)
    net = create_network("efnet", 4, modality="depth" if aux_channels == 3 else "thermal", variant="tiny",
                         aux_channels=aux_channels)
    rgb, aux = torch.randn(2, 3, 45, 77), torch.randn(2, aux_channels, 45, 77)
    out = net.train()(rgb, aux)
    assert out["logits"].shape == (2, 4, 45, 77)
    out["logits"].square().mean().backward()
    assert net.dbtc[0].score.weight.grad is not None and net.dbtc[0].score.weight.grad.abs().sum() > 0
    net.eval()
    with torch.no_grad():
        a, b = net(rgb, aux), net(rgb, aux)
    assert a.shape == (2, 4, 45, 77) and torch.equal(a, b)


def test_bad_input_and_pretrained_raise():
    net = create_network("efnet", 3, variant="tiny").eval()
    with pytest.raises(RgbtSegError, match="aux"):
        net(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32))
    with pytest.raises(RgbtSegError, match="pretrained"):
        create_network("efnet", 3, variant="tiny", pretrained=True)


@pytest.mark.slow  # ~3 s alone, more on a busy CI box
def test_onnx_export_tiny_dynamic_matches_torch():
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = create_network("efnet", 5, variant="tiny").eval()
    buf = io.BytesIO()
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 64, 96), torch.randn(1, 1, 64, 96)), buf, input_names=["rgb", "aux"],
                          output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={"rgb": axes, "aux": axes, "logits": axes})
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])
    flat_rgb, flat_aux = torch.full((1, 3, 50, 70), 0.3), torch.full((1, 1, 50, 70), -0.5)
    flat_rgb[..., 10:30, 20:45], flat_aux[..., 25:40, 5:30] = -1.0, 1.2  # flat areas: many exact ties
    cases = [(torch.randn(1, 3, 64, 96), torch.randn(1, 1, 64, 96)),
             (torch.randn(2, 3, 50, 70), torch.randn(2, 1, 50, 70)),  # sizes differ from the traced one
             (flat_rgb, flat_aux)]
    for rgb, aux in cases:
        with torch.no_grad():
            ref = net(rgb, aux).numpy()
        got = session.run(None, {"rgb": rgb.numpy(), "aux": aux.numpy()})[0]
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() < 1e-4


def test_clustering_runs_in_float32_under_autocast(monkeypatch):
    # density peaks are discrete choices: computed in half precision they picked other clusters than fp32
    import rgbt_seg_ros.networks.efnet as efnet

    torch.manual_seed(0)
    net = create_network("efnet", 9, variant="tiny", pretrained=False).eval()
    rgb, aux = torch.randn(1, 3, 96, 128), torch.randn(1, 1, 96, 128)
    seen = []
    original = efnet.density_peaks

    def spy(x, pos, *args, **kwargs):
        out = original(x, pos, *args, **kwargs)
        seen.append(out)
        return out

    monkeypatch.setattr(efnet, "density_peaks", spy)
    with torch.no_grad():
        ref = net(rgb, aux)
        ref_ids, seen[:] = list(seen), []
        with torch.autocast("cpu", dtype=torch.float16):
            half = net(rgb, aux).float()
    assert len(seen) == len(ref_ids) >= 2
    assert all((a == b).float().mean() >= 0.99 for a, b in zip(ref_ids, seen))
    assert (ref.argmax(1) == half.argmax(1)).float().mean() >= 0.95
