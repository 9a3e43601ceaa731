"""Conv stacks in windows (higgs_tts/core/windowed.py) on the codec's own stacks, with the real codec's geometry."""

import math

import pytest
import torch

from higgs_tts.core.windowed import Reach, feature_encoder_in_windows, in_windows
from higgs_tts.tools.tiny_checkpoint import full_size_codec_config


@pytest.fixture(scope="module")
def codec(tiny_checkpoint):
    from transformers import HiggsAudioV2TokenizerModel

    return HiggsAudioV2TokenizerModel.from_pretrained(tiny_checkpoint[1]).eval()


@pytest.fixture(scope="module")
def real_stacks():
    """The real codec's acoustic encoder and HuBERT conv feature encoder (sizes only, no weights): the tiny
    codec's must have their geometry."""
    from transformers.models.dac.modeling_dac import DacEncoder
    from transformers.models.hubert.modeling_hubert import HubertFeatureEncoder

    config = full_size_codec_config()
    with torch.device("meta"):
        return DacEncoder(config.acoustic_model_config), HubertFeatureEncoder(config.semantic_model_config)


def hubert_encoder(norm: str, seed: int = 0):
    """HuBERT's conv feature encoder with the real kernels and strides, narrow, random weights and norms."""
    from transformers import HubertConfig
    from transformers.models.hubert.modeling_hubert import HubertFeatureEncoder

    torch.manual_seed(seed)
    encoder = HubertFeatureEncoder(HubertConfig(conv_dim=(6,) * 7, feat_extract_norm=norm)).eval()
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.normal_(0.1, 0.5)  # norms too: their affine must be applied as the module applies it
    return encoder


def test_the_tiny_codec_has_the_real_codecs_geometry(codec, real_stacks):
    acoustic, semantic = real_stacks
    assert Reach.of(codec.acoustic_encoder) == Reach.of(acoustic)
    assert Reach.of(codec.semantic_model.feature_extractor) == Reach.of(semantic)
    assert isinstance(semantic.conv_layers[0].layer_norm, torch.nn.GroupNorm)  # feat_extract_norm "group"
    assert isinstance(codec.semantic_model.feature_extractor.conv_layers[0].layer_norm, torch.nn.GroupNorm)


def test_the_real_geometry(real_stacks):
    """As worked out by hand from DAC's and HuBERT's layers: frame n of the acoustic encoder reads 24 kHz samples
    [960 n - 22502, 960 n + 23134), HuBERT's conv features read 16 kHz samples [320 n, 320 n + 400)."""
    acoustic, semantic = (Reach.of(stack) for stack in real_stacks)
    assert (acoustic.stride, acoustic.offset, acoustic.span) == (960, 22502, 45636)
    assert (semantic.stride, semantic.offset, semantic.span) == (320, 0, 400)


def nan_frames(stack, samples: int, at: int) -> set[int]:
    """The output frames that read input sample `at`: a NaN there reaches exactly those (NaN * 0 is NaN too)."""
    signal = torch.randn(1, 1, samples)
    signal[..., at] = math.nan
    with torch.no_grad():
        out = stack(signal)
    return set(torch.nonzero(out.isnan().any(dim=1)[0]).flatten().tolist())


def reads(reach: Reach, samples: int, at: int) -> set[int]:
    return {n for n in range(reach.frames(samples))
            if n * reach.stride - reach.offset <= at < n * reach.stride - reach.offset + reach.span}


@pytest.mark.parametrize("at", [0, 960, 22501, 23134, 50000, 99999])
def test_reach_is_the_samples_each_acoustic_frame_reads(codec, at):
    reach = Reach.of(codec.acoustic_encoder)
    assert nan_frames(codec.acoustic_encoder, 100000, at) == reads(reach, 100000, at)
    with torch.no_grad():
        assert codec.acoustic_encoder(torch.zeros(1, 1, 100000)).shape[-1] == reach.frames(100000)


@pytest.mark.parametrize("at", [0, 319, 320, 399, 400, 5000, 12345, 15999])
def test_reach_is_the_samples_each_semantic_frame_reads(at):
    """With a per-frame LayerNorm ("layer"): the real "group" norm spreads every sample over all frames."""
    encoder = hubert_encoder("layer")
    stack = lambda signal: encoder(signal[:, 0])  # noqa: E731 (its forward takes [B, samples])
    reach = Reach.of(encoder)
    assert nan_frames(stack, 16000, at) == reads(reach, 16000, at)
    assert len(reach.layers) == 7 and reach.frames(16000) == 49


def assert_same_up_to_rounding(windowed: torch.Tensor, whole: torch.Tensor) -> None:
    """The same arithmetic on the same samples, but not always in the same order: PyTorch's CPU convolution
    takes another algorithm for inputs of up to 20480 values (a window's deepest layers), and an elementwise
    kernel may round an element otherwise where it falls elsewhere in its vector. So within float rounding."""
    assert windowed.shape == whole.shape
    assert (windowed - whole).abs().max() <= 1e-5 * whole.abs().max()


@pytest.mark.parametrize(("samples", "window"), [(96000, 24000), (96001, 48000), (110000, 48000), (150720, 72000)])
def test_the_acoustic_encoder_in_windows_is_the_whole_run(codec, samples, window):
    """Windows smaller and larger than the receptive field (45636 samples), ends on and off the stride grid,
    several windows every time."""
    signal = torch.randn(1, 1, samples, generator=torch.Generator().manual_seed(samples))
    reach, seen = Reach.of(codec.acoustic_encoder), []
    with torch.no_grad():
        whole = codec.acoustic_encoder(signal)
        windowed = in_windows(lambda w: seen.append(w.shape[-1]) or codec.acoustic_encoder(w), reach, signal, window)
    assert len(seen) >= 2 and max(seen) <= window + reach.span
    assert_same_up_to_rounding(windowed, whole)


@pytest.mark.parametrize("samples", [48000, 48399, 123457])
def test_a_layer_norm_feature_encoder_in_windows_is_the_whole_run(samples):
    encoder = hubert_encoder("layer")
    owner, signal = Owner(encoder), torch.randn(1, samples)
    with torch.no_grad():
        whole = encoder(signal)
        with feature_encoder_in_windows(owner, 16000):
            assert_same_up_to_rounding(owner.feature_extractor(signal), whole)


@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("samples", [48000, 48399, 123457])
def test_a_group_norm_feature_encoder_in_windows_normalizes_over_the_whole_clip(samples, groups):
    """Its statistics are summed over windows, in float64, not in one float32 pass: the same up to rounding."""
    encoder = hubert_encoder("group", seed=samples)
    if groups:  # fewer groups than channels: statistics over several channels
        norm = encoder.conv_layers[0].layer_norm
        encoder.conv_layers[0].layer_norm = torch.nn.GroupNorm(groups, norm.num_channels).eval()
        with torch.no_grad():
            encoder.conv_layers[0].layer_norm.weight.normal_(0.1, 0.5)
    signal = torch.randn(2, samples) * torch.tensor([[1.0], [3.0]]) + 0.5  # two clips, their own statistics
    owner = Owner(encoder)
    with torch.no_grad():
        whole = encoder(signal)
        with feature_encoder_in_windows(owner, 16000):
            assert owner.feature_extractor is not encoder
            windowed = owner.feature_extractor(signal)
    assert_same_up_to_rounding(windowed, whole)
    assert owner.feature_extractor is encoder  # put back


def test_a_group_norm_over_a_large_mean_and_a_small_spread_keeps_its_digits():
    """A clip with a DC offset: the channels' mean is thousands of times their spread. The mean is taken off
    before scaling, as GroupNorm does (folded into one shift, float32 lost about 2e-3 of the result here)."""
    encoder = hubert_encoder("group", seed=3)
    signal = 0.9 + 1e-5 * torch.randn(1, 123457, generator=torch.Generator().manual_seed(3))
    owner = Owner(encoder)
    with torch.no_grad():
        whole = encoder(signal)
        with feature_encoder_in_windows(owner, 16000):
            windowed = owner.feature_extractor(signal)
    assert (windowed - whole).abs().max() <= 1e-4 * whole.abs().max()


@pytest.mark.parametrize("samples", [960, 45636, 94596])
def test_a_signal_one_window_would_read_whole_runs_once(codec, samples):
    """Up to a full window's samples (the window plus the receptive field), every window would be the whole
    signal: it runs once, as it is, with no window at all."""
    reach, window, seen = Reach.of(codec.acoustic_encoder), 50000, []
    assert reach.window_samples(window) == 94596  # 51 strides of 960 to the 52nd frame, then its 45636
    signal = torch.randn(1, 1, samples, generator=torch.Generator().manual_seed(samples))
    with torch.no_grad():
        windowed = in_windows(lambda w: seen.append(w.shape[-1]) or codec.acoustic_encoder(w), reach, signal, window)
        assert torch.equal(windowed, codec.acoustic_encoder(signal))
    assert seen == [samples]


def test_the_feature_encoder_is_put_back_after_an_error():
    encoder = hubert_encoder("group")
    owner = Owner(encoder)
    with pytest.raises(RuntimeError, match="an error"), feature_encoder_in_windows(owner, 16000):
        raise RuntimeError("an error")
    assert owner.feature_extractor is encoder


class Owner(torch.nn.Module):
    """Holds a feature encoder as HubertModel does (`feature_extractor`)."""

    def __init__(self, encoder):
        super().__init__()
        self.feature_extractor = encoder
