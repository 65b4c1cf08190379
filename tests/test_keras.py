"""sepconv.keras against Keras' own layers with the same weights: outputs and gradients,
TF "same" padding, config and .keras round trips, the keras.ops fallback, errors, and a small
MobileNet trained on digits."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":
    pytest.skip("the tests compare gradients through torch autograd", allow_module_level=True)

import sepconv.keras as sk  # noqa: E402
from sepconv.keras import layers as sk_layers  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")
TOL = dict(atol=2e-5, rtol=1e-5)


def _pair(ours, theirs, shape, seed=0):
    """Build both layers on `shape`, give ours Keras' weights; return a random input."""
    keras.utils.set_random_seed(seed)
    x = torch.randn(*shape)
    theirs(x)
    ours(x)
    # non-zero biases, so that a misplaced bias shows
    theirs.set_weights([np.random.default_rng(seed).standard_normal(w.shape).astype("float32")
                        for w in theirs.get_weights()])
    ours.set_weights(theirs.get_weights())
    return x


def _outputs_and_grads(layer, x):
    x = x.clone().requires_grad_(True)
    y = layer(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    weights = [w.value for w in layer.trainable_weights]
    grads = torch.autograd.grad((y * g).sum(), [x, *weights])
    return y.detach(), grads


def _assert_same(ours, theirs, x):
    y, grads = _outputs_and_grads(ours, x)
    y_ref, grads_ref = _outputs_and_grads(theirs, x)
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, **TOL)
    assert len(grads) == len(grads_ref)
    for name, g, g_ref in zip(["input", *(w.name for w in theirs.trainable_weights)], grads, grads_ref):
        torch.testing.assert_close(g, g_ref, **TOL, msg=lambda m: f"gradient of {name}: {m}")


# kernel sizes 3 and 5, and even ones whose "same" padding is asymmetric (TF: extra bottom/right)
CASES = [(k, s, d, p) for k in (2, 3, 4, 5) for s in (1, 2) for d in (1, 2) for p in ("same", "valid")]


@pytest.mark.parametrize("kernel_size,strides,dilation,padding", CASES)
def test_depthwise_matches_keras(kernel_size, strides, dilation, padding):
    i = CASES.index((kernel_size, strides, dilation, padding))
    args = dict(kernel_size=kernel_size, strides=strides, dilation_rate=dilation, padding=padding,
                depth_multiplier=1 + i % 2, use_bias=i % 3 != 0, activation="relu" if i % 4 == 1 else None)
    ours, theirs = sk.DepthwiseConv2D(**args), keras.layers.DepthwiseConv2D(**args)
    # odd and even, non-square sizes: even sizes with stride 2 need TF's asymmetric padding
    x = _pair(ours, theirs, (2, 12 + i % 2, 11, 3))
    _assert_same(ours, theirs, x)


@pytest.mark.parametrize("kernel_size,strides,dilation,padding", CASES)
def test_separable_matches_keras(kernel_size, strides, dilation, padding):
    i = CASES.index((kernel_size, strides, dilation, padding))
    args = dict(filters=5, kernel_size=kernel_size, strides=strides, dilation_rate=dilation, padding=padding,
                depth_multiplier=1 + (i + 1) % 2, use_bias=i % 3 != 1, activation="relu" if i % 4 == 2 else None)
    ours, theirs = sk.SeparableConv2D(**args), keras.layers.SeparableConv2D(**args)
    x = _pair(ours, theirs, (2, 11, 12 + i % 2, 4))
    _assert_same(ours, theirs, x)


@pytest.mark.parametrize("layer", ["DepthwiseConv2D", "SeparableConv2D"])
@pytest.mark.parametrize("kernel_size,strides", [(3, 1), (3, 2), (4, 2)])
def test_channels_first_matches_keras(layer, kernel_size, strides):
    args = dict(kernel_size=kernel_size, strides=strides, padding="same", data_format="channels_first",
                depth_multiplier=2, activation="relu6")
    if layer == "SeparableConv2D":
        args["filters"] = 6
    ours, theirs = getattr(sk, layer)(**args), getattr(keras.layers, layer)(**args)
    x = _pair(ours, theirs, (2, 3, 10, 9))
    _assert_same(ours, theirs, x)


@pytest.mark.parametrize("dtype", ["mixed_bfloat16", "float64"])
def test_dtype_policies_match_keras(dtype):
    ours, theirs = (cls(8, 3, strides=2, padding="same", dtype=dtype)
                    for cls in (sk.SeparableConv2D, keras.layers.SeparableConv2D))
    x = _pair(ours, theirs, (2, 10, 10, 4))
    y, y_ref = ours(x), theirs(x)
    assert y.dtype == y_ref.dtype == (torch.bfloat16 if dtype == "mixed_bfloat16" else torch.float64)
    # bfloat16: Keras rounds the pointwise output and again after adding the bias; sepconv adds
    # the bias inside the GEMM (one rounding), so they differ by a rounding of the output scale
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0.02 * y_ref.abs().max().item())


def test_weights_have_keras_names_and_shapes():
    for name, args in (("DepthwiseConv2D", dict(kernel_size=3, depth_multiplier=2)),
                       ("SeparableConv2D", dict(filters=7, kernel_size=3, depth_multiplier=2))):
        ours, theirs = getattr(sk, name)(**args), getattr(keras.layers, name)(**args)
        x = torch.randn(1, 8, 8, 4)
        ours(x), theirs(x)
        assert [(w.name, tuple(w.shape)) for w in ours.weights] == [(w.name, tuple(w.shape)) for w in theirs.weights]
        assert isinstance(ours, getattr(keras.layers, name))


def test_same_padding_is_tensorflows():
    # TF: out = ceil(n / s); total = max((out - 1) * s + (k - 1) * d + 1 - n, 0), extra at the end
    assert sk_layers.same_padding((224, 224), (3, 3), (2, 2), (1, 1)) == ((0, 1), (0, 1))
    assert sk_layers.same_padding((7, 7), (3, 3), (2, 2), (1, 1)) == ((1, 1), (1, 1))
    assert sk_layers.same_padding((5, 6), (4, 2), (1, 1), (1, 1)) == ((1, 2), (0, 1))
    assert sk_layers.same_padding((9, 9), (3, 3), (1, 1), (2, 2)) == ((2, 2), (2, 2))
    assert sk_layers.same_padding((1, 1), (3, 3), (2, 2), (1, 1)) == ((1, 1), (1, 1))


def test_the_fast_path_hands_sepconv_nhwc(monkeypatch):
    """The depthwise call sees the NHWC data as a channels_last view (no copy to NCHW)."""
    seen = []
    original = sk_layers.depthwise_conv2d

    def spy(x, *args):
        seen.append((x.is_contiguous(memory_format=torch.channels_last), x.is_contiguous()))
        return original(x, *args)

    monkeypatch.setattr(sk_layers, "depthwise_conv2d", spy)
    layer = sk.SeparableConv2D(16, 3, padding="same")
    y = layer(torch.randn(2, 10, 10, 8))
    assert seen == [(True, False)]
    assert y.shape == (2, 10, 10, 16) and y.is_contiguous()


def test_get_config_round_trip():
    layer = sk.SeparableConv2D(8, (3, 5), strides=2, padding="same", depth_multiplier=2, dilation_rate=1,
                               activation="relu", use_bias=False, depthwise_regularizer="l2",
                               pointwise_initializer="he_normal", algorithm="direct")
    config = layer.get_config()
    assert config["algorithm"] == "direct" and config["padding"] == "same"
    clone = sk.SeparableConv2D.from_config(config)
    assert clone.get_config() == config
    again = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(again) is sk.SeparableConv2D and again.get_config() == config
    assert keras.saving.get_registered_name(sk.DepthwiseConv2D) == "sepconv>DepthwiseConv2D"
    dw = sk.DepthwiseConv2D(3, padding="same", depth_multiplier=2, bias_initializer="ones")
    assert sk.DepthwiseConv2D.from_config(dw.get_config()).get_config() == dw.get_config()


def test_keras_file_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((12, 12, 4)),
        sk.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, activation="relu"),
        sk.SeparableConv2D(6, 4, padding="same", bias_initializer="ones"),
    ])
    x = np.random.default_rng(0).standard_normal((2, 12, 12, 4)).astype("float32")
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert [type(layer) for layer in loaded.layers] == [sk.DepthwiseConv2D, sk.SeparableConv2D]
    assert torch.equal(loaded(x), model(x))


def test_other_backends_run_keras_ops_and_warn_once(monkeypatch):
    monkeypatch.setattr(sk_layers, "_backend", lambda: "jax")
    monkeypatch.setattr(sk_layers, "_warned", False)
    args = dict(filters=5, kernel_size=4, strides=2, padding="same")
    ours, theirs = sk.SeparableConv2D(**args), keras.layers.SeparableConv2D(**args)
    dw, dw_ref = sk.DepthwiseConv2D(3, padding="same"), keras.layers.DepthwiseConv2D(3, padding="same")
    # the one warning names the backend and the fix
    with pytest.warns(UserWarning, match=r"backend is 'jax'.*keras.ops.*KERAS_BACKEND=torch") as caught:
        x = _pair(ours, theirs, (2, 9, 8, 3))
        x2 = _pair(dw, dw_ref, (1, 6, 6, 3))
    assert len([w for w in caught if "sepconv" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        _assert_same(ours, theirs, x)
        _assert_same(dw, dw_ref, x2)


@pytest.mark.parametrize("layer,args,match", [
    ("DepthwiseConv2D", dict(kernel_size=3, padding="full"), r"DepthwiseConv2D: `padding` must be one of "
                                                             r"\['valid', 'same'\].*Received: padding='full'"),
    ("DepthwiseConv2D", dict(kernel_size=0), r"`kernel_size` must be >= 1. Received: kernel_size=0"),
    ("DepthwiseConv2D", dict(kernel_size=3, depth_multiplier=0), r"`depth_multiplier` must be >= 1"),
    ("DepthwiseConv2D", dict(kernel_size=3, strides=(1, 0)), r"`strides` must be >= 1"),
    ("DepthwiseConv2D", dict(kernel_size=3, dilation_rate=0), r"`dilation_rate` must be >= 1"),
    ("DepthwiseConv2D", dict(kernel_size=3, data_format="nhwc"), r"`data_format` must be one of"),
    ("DepthwiseConv2D", dict(kernel_size=3, algorithm="winograd"), r"`algorithm` must be one of"),
    ("SeparableConv2D", dict(filters=0, kernel_size=3), r"SeparableConv2D: `filters` must be >= 1"),
    ("SeparableConv2D", dict(filters=4, kernel_size=3, padding="causal"), r"`padding` must be one of"),
    ("SeparableConv2D", dict(filters=4, kernel_size=(3, 0)), r"`kernel_size` must be >= 1"),
])
def test_bad_arguments(layer, args, match):
    with pytest.raises(ValueError, match=match):
        getattr(sk, layer)(**args)


def test_padding_is_case_insensitive_as_in_keras():
    assert sk.DepthwiseConv2D(3, padding="SAME").padding == "same"


def _mobilenet(alpha=0.125, size=32):
    """MobileNetV1 (a 3x3 convolution with stride 2, then 13 depthwise-separable blocks) at
    width `alpha`: MobileNet blocks (DepthwiseConv2D, BN, ReLU, 1x1 Conv2D, BN, ReLU) and
    Xception-style ones (SeparableConv2D, BN, ReLU) in turn."""
    blocks = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1)]
    layers = [keras.Input((size, size, 1)), keras.layers.Conv2D(int(32 * alpha), 3, strides=2, padding="same",
                                                                use_bias=False),
              keras.layers.BatchNormalization(), keras.layers.ReLU()]
    for i, (channels, stride) in enumerate(blocks):
        channels = int(channels * alpha)
        if i % 2 == 0:
            layers += [sk.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False),
                       keras.layers.BatchNormalization(), keras.layers.ReLU(),
                       keras.layers.Conv2D(channels, 1, use_bias=False)]
        else:
            layers += [sk.SeparableConv2D(channels, 3, strides=stride, padding="same", use_bias=False)]
        layers += [keras.layers.BatchNormalization(), keras.layers.ReLU()]
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)]
    return keras.Sequential(layers)


def test_mobilenet_trains_on_digits_and_saves(tmp_path):
    from sepconv.data import digits

    pytest.importorskip("sklearn")
    train, _ = digits(32)
    x = train.tensors[0][:512].permute(0, 2, 3, 1).numpy()   # NHWC
    y = train.tensors[1][:512].numpy()
    keras.utils.set_random_seed(0)
    model = _mobilenet()
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=64, epochs=4, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses
    path = tmp_path / "mobilenet.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert sum(isinstance(layer, (sk.DepthwiseConv2D, sk.SeparableConv2D)) for layer in loaded.layers) == 13
    torch.testing.assert_close(loaded.predict(x[:64], verbose=0), model.predict(x[:64], verbose=0))


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": SRC, **env})


def test_import_is_lazy_and_errors_are_clear():
    # `import sepconv` does not import keras; sepconv.keras resolves on first use
    r = _run("import sys, sepconv; assert 'keras' not in sys.modules; "
             "assert sepconv.keras.SeparableConv2D.__name__ == 'SeparableConv2D'; print('ok')")
    assert r.stdout.strip() == "ok", r.stderr
    r = _run("import sys; sys.modules['keras'] = None; import sepconv.keras")
    assert "pip install 'sepconv[keras]'" in r.stderr, r.stderr
    # keras installed, its backend not (tensorflow is keras' default; none of these is here)
    r = _run("import sepconv.keras", KERAS_BACKEND="jax")
    if r.returncode == 0:
        pytest.skip("jax is installed")
    assert "KERAS_BACKEND=torch" in r.stderr, r.stderr
