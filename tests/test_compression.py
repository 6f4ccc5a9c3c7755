"""The compression module (issue 7): metrics against hand computation, the range coder, the baselines on known
inputs, AutoencoderCompressor's quality on held-out generated spikes, persistence, determinism and errors, and the
SpikeInterface round trip. Tiny generated spikes, CPU, fixed seeds: seconds."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spikeinterface_elvisort.compression import (  # noqa: E402
    CompressiveAutoencoder,
    CompressorConfig,
    DCTCompressor,
    DWTCompressor,
    PCACompressor,
    ResidualVectorQuantiser,
    AutoencoderCompressor,
    StaticEntropyCoder,
    VectorQuantiser,
    cluster_spikes,
    code_entropy,
    compress_sorting_analyzer,
    compression_ratio,
    count_macs,
    entropy_bits,
    extract_spike_waveforms,
    load_compressed,
    matched_accuracy,
    sndr,
    sorting_change,
)

from conftest import make_spikes  # noqa: E402

SMALL = dict(width=64, decoder_width=32)  # the seed's widths are 256; small ones keep the tests fast


@pytest.fixture(scope="module")
def spikes():
    return make_spikes()


@pytest.fixture(scope="module")
def fitted(spikes, single_thread_torch):
    train = spikes[0][:400]
    return AutoencoderCompressor(
        n_features=2,
        codebook_size=32,
        epochs=8,
        warmup_epochs=2,
        decoder_epochs=3,
        batch_size=32,
        learning_rate=2e-3,
        device="cpu",
        random_state=0,
        **SMALL,
    ).fit(train)


# -- metrics ---------------------------------------------------------------------------------------------------------


def test_sndr_matches_hand_computation():
    original = np.array([[[3.0], [4.0]]])  # |x| = 5
    reconstructed = np.array([[[3.0], [3.5]]])  # |x - x_hat| = 0.5
    assert sndr(original, reconstructed)[0] == pytest.approx(20.0)
    assert np.isinf(sndr(original, original)[0])
    with pytest.raises(ValueError, match="same shape"):
        sndr(original, reconstructed[:, :1])


def test_compression_ratio_is_eq5_with_entropy():
    # seed eq. 5: M * D * W / (N_feat * H): 4 channels, 48 samples, 16 bits, 2 indices of 7 bits each
    assert compression_ratio(48, 4, bits_per_spike=2 * 7.0) == pytest.approx(4 * 48 * 16 / 14.0)
    assert compression_ratio(48, 4, 0.0) == float("inf")


def test_entropy_per_position_and_pooled():
    codes = np.array([[0, 1], [0, 2], [0, 1], [0, 2]])
    assert entropy_bits(codes[:, 1]) == pytest.approx(1.0)
    assert code_entropy(codes, per_position=True) == pytest.approx(0.0 + 1.0)
    # pooled: symbols 0 (4x), 1 (2x), 2 (2x) -> H = 1.5 bits per index, 2 indices per row
    assert code_entropy(codes, per_position=False) == pytest.approx(3.0)


def test_count_macs_of_a_convolution():
    layer = torch.nn.Conv1d(4, 8, 3, padding=1, groups=2)
    # 8 outputs x 10 samples, each summing 4 / 2 input channels x 3 taps
    assert count_macs(layer, torch.zeros(1, 4, 10)) == 8 * 10 * 2 * 3


def test_encoder_matches_seed_table_2_parameter_count():
    # the seed's Table 2: 4 channels x 48 samples, 256 features, N_feat = 16, K = 256 -> 17,952 parameters on chip
    compressor = AutoencoderCompressor(n_features=16, codebook_size=256)
    compressor.config_ = CompressorConfig(num_samples=48, n_features=16, codebook_size=256)
    compressor.model_ = CompressiveAutoencoder(compressor.config_).eval()
    size = compressor.encoder_size()
    assert size["parameters"] == 17952
    assert size["macs"] > 0


# -- entropy coder ---------------------------------------------------------------------------------------------------


def test_range_coder_round_trip_is_exact_and_near_entropy():
    rng = np.random.default_rng(0)
    probabilities = np.array([0.6, 0.2, 0.1, 0.05, 0.05])
    train = np.stack([rng.choice(5, 5000, p=probabilities), rng.choice(5, 5000, p=probabilities[::-1])], axis=1)
    test = np.stack([rng.choice(5, 3000, p=probabilities), rng.choice(5, 3000, p=probabilities[::-1])], axis=1)
    coder = StaticEntropyCoder([5, 5]).fit(train)
    data = coder.encode(test)
    np.testing.assert_array_equal(coder.decode(data, num_rows=3000), test)
    ideal = coder.cross_entropy_bits(test)
    assert ideal / 3000 == pytest.approx(code_entropy(test), rel=0.02)
    assert ideal <= 8 * len(data) <= ideal * 1.01 + 64  # a real coder: a little above the ideal length


def test_range_coder_codes_unseen_symbols_and_rejects_bad_ones():
    coder = StaticEntropyCoder([4]).fit(np.zeros((10, 1), dtype=int))
    symbols = np.array([[3], [0], [2]])
    np.testing.assert_array_equal(coder.decode(coder.encode(symbols), 3), symbols)
    with pytest.raises(ValueError, match="alphabet_size"):
        coder.encode(np.array([[4]]))
    with pytest.raises(ValueError, match="not fitted"):
        StaticEntropyCoder([4]).encode(symbols)
    restored = StaticEntropyCoder.from_state_dict(coder.state_dict())
    assert restored.encode(symbols) == coder.encode(symbols)


# -- baselines -------------------------------------------------------------------------------------------------------


def test_baselines_are_exact_with_every_coefficient():
    waveforms = make_spikes(200, num_samples=48)[0]
    for compressor in (PCACompressor(48 * 4), DCTCompressor(48), DWTCompressor(48)):
        np.testing.assert_allclose(compressor.fit(waveforms).reconstruct(waveforms), waveforms, atol=1e-4)


def test_dct_keeps_low_frequencies_exactly():
    from scipy.fft import idct

    basis = np.zeros((3, 32, 1))
    basis[:, 2, 0] = [1.0, -2.0, 0.5]  # spikes made of the third DCT basis function only
    waveforms = idct(basis, type=2, norm="ortho", axis=1)
    compressor = DCTCompressor(3).fit(waveforms)
    np.testing.assert_allclose(compressor.encode(waveforms), [[0, 0, 1.0], [0, 0, -2.0], [0, 0, 0.5]], atol=1e-6)
    np.testing.assert_allclose(compressor.reconstruct(waveforms), waveforms, atol=1e-6)
    assert DCTCompressor(2).fit(waveforms).reconstruct(waveforms) == pytest.approx(0.0, abs=1e-6)


def test_dwt_seed_version_keeps_the_largest_coefficients():
    import pywt

    rng = np.random.default_rng(1)
    waveforms = rng.standard_normal((5, 48, 2)).astype(np.float32)
    compressor = DWTCompressor(6).fit(waveforms)
    coefficients = compressor.encode(waveforms).reshape(5, 2, -1)
    assert np.all((coefficients != 0).sum(axis=2) == 6)
    full = np.concatenate(
        pywt.wavedec(waveforms[0, :, 0].astype(np.float64), "sym4", mode="periodization", level=compressor.level_)
    )
    kept = np.sort(np.abs(full))[-6:]
    np.testing.assert_allclose(np.sort(np.abs(coefficients[0, 0][coefficients[0, 0] != 0])), kept, rtol=1e-5)


def test_seed_ratio_formulas():
    waveforms = make_spikes(50, num_samples=48)[0]
    assert PCACompressor(6).fit(waveforms).seed_ratio() == pytest.approx(48 * 4 / 6)
    assert DCTCompressor(8).fit(waveforms).seed_ratio() == pytest.approx(48 / 8)
    assert DWTCompressor(4).fit(waveforms).seed_ratio() == pytest.approx(48 * 16 / (16 * 4 + 48))


def test_strong_baseline_quantises_and_codes():
    waveforms, _, _ = make_spikes(400, num_samples=32)
    train, test = waveforms[:200], waveforms[200:]
    coarse = PCACompressor(4, n_levels=8).fit(train)
    fine = PCACompressor(4, n_levels=64).fit(train)
    unquantised = PCACompressor(4).fit(train)
    codes_coarse, codes_fine = coarse.encode(test), fine.encode(test)
    assert codes_coarse.dtype == np.int64
    assert coarse.bits_per_spike(codes_coarse) < fine.bits_per_spike(codes_fine)
    quality = [sndr(test, c.reconstruct(test)).mean() for c in (coarse, fine, unquantised)]
    assert quality[0] < quality[1] <= quality[2] + 1e-6
    # the quantisation error of a uniform quantiser is at most half a step per coefficient
    error = np.abs(fine.decode(codes_fine) - unquantised.reconstruct(test))
    assert error.max() <= 0.5 * fine.step_[0] * 2 + 1e-5  # two orthonormal coefficients may add up
    assert 8 * coarse.coded_bytes(codes_coarse) >= 0.99 * coarse.bits_per_spike(codes_coarse) * len(test)


def test_baseline_errors():
    with pytest.raises(ValueError, match="n_coefficients"):
        PCACompressor(0)
    with pytest.raises(ValueError, match="n_levels"):
        DCTCompressor(4, n_levels=1)
    with pytest.raises(ValueError, match="not fitted"):
        DWTCompressor(4).encode(np.zeros((2, 48, 1)))
    with pytest.raises(ValueError, match="exceeds num_samples"):
        DCTCompressor(60).fit(np.zeros((2, 48, 1)))


# -- the autoencoder -------------------------------------------------------------------------------------------------


def test_quantiser_straight_through_and_restarts():
    quantiser = VectorQuantiser(codebook_size=4, dim=3)
    with torch.no_grad():
        quantiser.codebook.copy_(torch.tensor([[0.0, 0, 0], [1, 1, 1], [5, 5, 5], [9, 9, 9]]))
    latents = torch.tensor([[[0.1, 0.0, 0.0], [1.2, 1.0, 0.9]]], requires_grad=True)
    quantised, indices, losses = quantiser.train()(latents)
    assert indices.tolist() == [[0, 1]]
    quantised.sum().backward()
    np.testing.assert_allclose(latents.grad.numpy(), 1.0)  # straight-through: identity gradient
    assert set(losses) == {"codebook", "commitment"}
    assert quantiser.restart_dead(torch.full((8, 3), 42.0)) == 2  # codewords 2 and 3 were never chosen
    assert torch.all(quantiser.codebook[2:] > 41)
    quantiser.initialise(torch.randn(10, 3))
    assert quantiser.restart_dead(torch.randn(10, 3)) == 4  # usage was reset by initialise


def test_ema_codebook_follows_the_mean_of_its_vectors():
    quantiser = VectorQuantiser(codebook_size=2, dim=2, ema_decay=0.5).train()
    assert not quantiser.codebook.requires_grad
    with torch.no_grad():
        quantiser.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    quantiser._reset_ema()
    latents = torch.tensor([[[1.0, 1.0], [3.0, 1.0], [9.0, 9.0]]])
    for _ in range(30):
        _, indices, losses = quantiser(latents)
    assert indices.tolist() == [[0, 0, 1]] and set(losses) == {"commitment"}
    # each codeword converges to the mean of the vectors that choose it
    np.testing.assert_allclose(quantiser.codebook.numpy(), [[2.0, 1.0], [9.0, 9.0]], atol=1e-3)
    with pytest.raises(ValueError, match="ema_decay"):
        VectorQuantiser(4, 2, ema_decay=1.5)


def test_residual_quantiser_codes_what_the_first_stage_leaves():
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(500, 6, generator=generator)
    one, two = ResidualVectorQuantiser(16, 6, stages=1), ResidualVectorQuantiser(16, 6, stages=2)
    one.initialise_kmeans(latents, seed=0)
    two.initialise_kmeans(latents, seed=0)
    torch.testing.assert_close(one.stages[0].codebook, two.stages[0].codebook)  # the same first stage
    indices = two.nearest(latents)
    assert indices.shape == (500, 2)
    error_one = (latents - one.lookup(one.nearest(latents))).pow(2).sum(1).mean()
    error_two = (latents - two.lookup(indices)).pow(2).sum(1).mean()
    assert error_two < 0.8 * error_one
    quantised, forward_indices, losses = two.train()(latents[None])
    assert torch.equal(forward_indices[0], indices) and set(losses) == {"codebook", "commitment"}
    torch.testing.assert_close(quantised[0], two.lookup(indices))


def test_codeword_outputs_restore_each_codeword_as_the_mean_of_its_spikes(spikes, single_thread_torch):
    """With one index per spike, the decoder's per-codeword waveforms make it k-means' centroid step exactly."""
    waveforms, _, clean = spikes
    train = waveforms[:400]
    kwargs = dict(n_features=1, codebook_size=8, epochs=4, warmup_epochs=1, decoder_epochs=2, device="cpu",
                  random_state=0, **SMALL)
    compressor = AutoencoderCompressor(codeword_outputs=True, **kwargs).fit(train)
    codes = compressor.encode(train)[:, 0, 0]
    used = np.unique(codes)
    restored = compressor.decode(used[:, None, None])
    for k, waveform in zip(used, restored):
        np.testing.assert_allclose(waveform, train[codes == k].mean(axis=0), atol=1e-4)
    plain = AutoencoderCompressor(codeword_outputs=False, **kwargs).fit(train)
    test, test_clean = waveforms[400:], clean[400:]
    assert sndr(test_clean, compressor.reconstruct(test)).mean() > sndr(test_clean, plain.reconstruct(test)).mean()


def test_residual_stages_and_ema_in_the_compressor(spikes, single_thread_torch, tmp_path):
    waveforms, _, clean = spikes
    train, test, test_clean = waveforms[:400], waveforms[400:], clean[400:]
    # 3 units, 2 codewords: one stage cannot tell them apart, two stages (4 combinations) can
    kwargs = dict(n_features=1, codebook_size=2, epochs=6, warmup_epochs=2, decoder_epochs=3, device="cpu",
                  random_state=0, codeword_outputs=True, **SMALL)
    one = AutoencoderCompressor(**kwargs).fit(train)
    two = AutoencoderCompressor(residual_stages=2, ema_decay=0.99, **kwargs).fit(train)
    codes = two.encode(test)
    assert codes.shape == (200, 1, 2) and two.codes_per_group == 2
    assert sndr(test_clean, two.decode(codes)).mean() > sndr(test_clean, one.reconstruct(test)).mean()
    assert sndr(test_clean, two.decode(codes)).mean() > 15.0
    loaded = AutoencoderCompressor.load(two.save(tmp_path / "two.pt"))
    assert loaded.compress(test) == two.compress(test)
    np.testing.assert_array_equal(loaded.decompress(two.compress(test), len(test)), two.reconstruct(test))
    with pytest.raises(ValueError, match="residual_stages"):
        AutoencoderCompressor(residual_stages=0).fit(train)
    with pytest.raises(ValueError, match="ema_decay"):
        AutoencoderCompressor(ema_decay=1.0).fit(train)


def test_a_file_of_the_first_format_still_loads(spikes, single_thread_torch):
    """Files written before residual stages existed (format 1: one quantiser, no such settings) load unchanged."""
    fitted = AutoencoderCompressor(n_features=2, codebook_size=8, epochs=2, warmup_epochs=1, decoder_epochs=1,
                                   ema_decay=None, codeword_outputs=False, device="cpu", **SMALL).fit(spikes[0][:200])
    state = fitted.state()
    legacy = dict(state, format_version=1)
    legacy["state_dict"] = {key.replace("quantiser.stages.0.", "quantiser."): value
                            for key, value in state["state_dict"].items()}
    for field in ("residual_stages", "ema_decay", "codeword_outputs"):
        del legacy["params"][field], legacy["config"][field]
    loaded = AutoencoderCompressor.from_state(legacy)
    test = spikes[0][400:]
    assert loaded.compress(test) == fitted.compress(test)


def test_compressor_reconstructs_held_out_spikes(spikes, fitted):
    waveforms, _, clean = spikes
    test, test_clean = waveforms[400:], clean[400:]
    codes = fitted.encode(test)
    assert codes.shape == (200, 1, 2) and codes.dtype == np.int64
    restored = fitted.decode(codes)
    assert restored.shape == test.shape and restored.dtype == np.float32
    # the noise (0.05 per sample against unit-amplitude spikes) caps the SNDR against the noisy spikes near 13 dB:
    # a working compressor comes close to that cap and is closer still to the noise-free spike (it denoises)
    assert sndr(test, restored).mean() > 10.5
    assert sndr(test_clean, restored).mean() > 15.0
    assert sndr(test_clean, restored).mean() > sndr(test_clean, test).mean()
    bits = fitted.bits_per_group(codes)
    assert 0 < bits <= 2 * np.log2(32)
    assert fitted.history_[-1]["reconstruction"] < fitted.history_[0]["reconstruction"]
    assert [row.get("stage") for row in fitted.history_[-3:]] == ["decoder"] * 3


def test_compressor_groups_channels(spikes, fitted):
    waveforms = spikes[0][400:410]
    wide = np.concatenate([waveforms, waveforms[:, :, ::-1]], axis=2)  # 8 channels = 2 groups of 4
    codes = fitted.encode(wide)
    assert codes.shape == (10, 2, 2)
    np.testing.assert_array_equal(codes[:, 0], fitted.encode(waveforms)[:, 0])
    np.testing.assert_allclose(fitted.decode(codes)[:, :, :4], fitted.reconstruct(waveforms), atol=1e-5)


def test_compress_bytes_round_trip(spikes, fitted):
    test = spikes[0][400:]
    data = fitted.compress(test)
    np.testing.assert_allclose(fitted.decompress(data, num_spikes=len(test)), fitted.reconstruct(test), atol=1e-6)
    assert 8 * len(data) <= 1.1 * fitted.bits_per_group(fitted.encode(test)) * len(test) + 64


def test_save_load_gives_identical_codes(spikes, fitted, tmp_path):
    test = spikes[0][400:]
    path = fitted.save(tmp_path / "compressor.pt")
    loaded = AutoencoderCompressor.load(path)
    np.testing.assert_array_equal(loaded.encode(test), fitted.encode(test))
    np.testing.assert_array_equal(loaded.decode(fitted.encode(test)), fitted.decode(fitted.encode(test)))
    assert loaded.compress(test) == fitted.compress(test)


def test_same_random_state_same_model(spikes, single_thread_torch):
    train = spikes[0][:120]
    kwargs = dict(
        n_features=1, codebook_size=8, epochs=2, warmup_epochs=1, decoder_epochs=1, batch_size=32, device="cpu", **SMALL
    )
    first = AutoencoderCompressor(random_state=3, **kwargs).fit(train)
    second = AutoencoderCompressor(random_state=3, **kwargs).fit(train)
    np.testing.assert_array_equal(first.encode(train), second.encode(train))
    for a, b in zip(first.model_.state_dict().values(), second.model_.state_dict().values()):
        assert torch.equal(a, b)


def test_kmeans_refresh_resets_the_codebook(spikes, single_thread_torch):
    train = spikes[0][:200]
    kwargs = dict(
        n_features=1,
        codebook_size=8,
        epochs=4,
        warmup_epochs=1,
        decoder_epochs=10,
        batch_size=32,
        device="cpu",
        random_state=0,
        **SMALL,
    )
    plain = AutoencoderCompressor(**kwargs).fit(train)
    refreshed = AutoencoderCompressor(kmeans_refresh_every=1, **kwargs).fit(train)
    assert not torch.equal(plain.model_.quantiser.stages[0].codebook, refreshed.model_.quantiser.stages[0].codebook)
    assert sndr(train, refreshed.reconstruct(train)).mean() > 8.0  # the decoder epochs adapt to the new codebook
    with pytest.raises(ValueError, match="kmeans_refresh_every"):
        AutoencoderCompressor(kmeans_refresh_every=-1).fit(train)


def test_inputs_are_not_modified(spikes, fitted):
    test = spikes[0][400:420].copy()
    before = test.copy()
    codes = fitted.encode(test)
    codes_before = codes.copy()
    fitted.decode(codes)
    np.testing.assert_array_equal(test, before)
    np.testing.assert_array_equal(codes, codes_before)


def test_bad_input_gives_clear_errors(spikes, fitted):
    test = spikes[0][400:]
    with pytest.raises(ValueError, match=r"\(num_spikes, num_samples, num_channels\)"):
        fitted.encode(test[:, :, 0])
    with pytest.raises(ValueError, match="multiple of channels_per_group"):
        fitted.encode(test[:, :, :3])
    with pytest.raises(ValueError, match="samples per spike"):
        fitted.encode(test[:, :20])
    bad = test.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fitted.encode(bad)
    with pytest.raises(ValueError, match="codebook_size"):
        fitted.decode(np.full((1, 1, 2), 99))
    with pytest.raises(ValueError, match="not fitted"):
        AutoencoderCompressor().encode(test)
    with pytest.raises(ValueError, match="epochs"):
        AutoencoderCompressor(epochs=0).fit(test)
    with pytest.raises(ValueError, match="warmup_epochs"):
        AutoencoderCompressor(epochs=2, warmup_epochs=2).fit(test)
    with pytest.raises(ValueError, match="decoder_epochs"):
        AutoencoderCompressor(decoder_epochs=-1).fit(test)
    with pytest.raises(ValueError, match="reconstruction_loss"):
        AutoencoderCompressor(reconstruction_loss="l1", epochs=3).fit(test)
    with pytest.raises(ValueError, match="width"):
        AutoencoderCompressor(width=48, epochs=3).fit(test)
    with pytest.raises(ValueError, match="CUDA"):
        if torch.cuda.is_available():
            pytest.skip("CUDA is available")
        AutoencoderCompressor(device="cuda", epochs=3).fit(test)


# -- sorting and SpikeInterface --------------------------------------------------------------------------------------


def test_matched_accuracy_by_hand():
    truth = np.array([0, 0, 0, 1, 1, 2])
    assert matched_accuracy(truth, np.array([5, 5, 5, 7, 7, 9])) == 1.0
    assert matched_accuracy(truth, np.array([1, 1, 0, 0, 0, -1])) == pytest.approx(4 / 6)


def test_sorting_change_on_separable_spikes(spikes):
    waveforms, labels, clean = spikes
    result = sorting_change(waveforms[:300], clean[:300], labels[:300])
    assert set(result) == {"pca_kmeans", "gmm_bic"}
    assert result["pca_kmeans"]["before"] > 0.95 and result["pca_kmeans"]["after"] > 0.95
    assert result["pca_kmeans"]["change"] == pytest.approx(
        result["pca_kmeans"]["after"] - result["pca_kmeans"]["before"]
    )


def test_sorting_analyzer_round_trip(tmp_path, single_thread_torch):
    from spikeinterface.core import create_sorting_analyzer, generate_ground_truth_recording

    recording, sorting = generate_ground_truth_recording(
        num_channels=8, num_units=3, durations=[5.0], sampling_frequency=32000.0, seed=0
    )
    waveforms, spike_vector, channels = extract_spike_waveforms(recording, sorting, num_channels=4)
    assert waveforms.shape == (sorting.to_spike_vector().size, 48, 4)  # 0.5 + 1.0 ms at 32 kHz
    assert channels.shape == (len(waveforms), 4)
    np.testing.assert_array_equal(spike_vector["unit_index"], sorting.to_spike_vector()["unit_index"])
    analyzer = create_sorting_analyzer(sorting, recording, format="memory", sparse=False)
    compressor = AutoencoderCompressor(
        n_features=2, codebook_size=16, epochs=2, warmup_epochs=1, decoder_epochs=1, device="cpu", **SMALL
    ).fit(waveforms)
    summary = compress_sorting_analyzer(analyzer, tmp_path / "spikes.npz", compressor=compressor)
    assert summary["num_spikes"] == len(waveforms) and summary["payload_ratio"] > 1
    restored = load_compressed(tmp_path / "spikes.npz")
    np.testing.assert_allclose(restored["waveforms"], compressor.reconstruct(waveforms), atol=1e-5)
    np.testing.assert_array_equal(restored["channel_indices"], channels)
    assert restored["sampling_frequency"] == recording.sampling_frequency
    with pytest.raises(ValueError, match=".npz"):
        compress_sorting_analyzer(analyzer, tmp_path / "spikes.bin", compressor=compressor)


def test_spike_compressor_is_the_default_codec_and_autoencoder_files_load(spikes, fitted, tmp_path):
    """SpikeCompressor is the adaptive codebook (the best codec measured); files of version 0.1.0, whose autoencoder
    was named SpikeCompressor, restore with the autoencoder; loading one as the default codec says what to call."""
    import json

    from spikeinterface_elvisort import SpikeCompressor as TopLevel
    from spikeinterface_elvisort.compression import AdaptiveCodebookCompressor, save_compressed
    from spikeinterface_elvisort.compression import SpikeCompressor as Default

    assert Default is AdaptiveCodebookCompressor and TopLevel is Default
    waveforms = spikes[0][400:]
    path = tmp_path / "old.npz"
    spike_vector = np.zeros(len(waveforms), dtype=[("sample_index", "int64"), ("unit_index", "int64")])
    save_compressed(path, fitted, waveforms, spikes=spike_vector, channel_indices=np.zeros((len(waveforms), 4), int),
                    sampling_frequency=32000.0, ms_before=0.5, ms_after=1.0)
    with np.load(path) as data:  # write the file as version 0.1.0 did: the autoencoder under its old name
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(arrays["meta"].tobytes().decode())
    assert meta["codec"] == "AutoencoderCompressor"
    arrays["meta"] = np.frombuffer(json.dumps({**meta, "codec": "SpikeCompressor"}).encode(), dtype=np.uint8)
    np.savez(path, **arrays)
    restored = load_compressed(path)
    assert isinstance(restored["compressor"], AutoencoderCompressor)
    np.testing.assert_allclose(restored["waveforms"], fitted.reconstruct(waveforms), atol=1e-6)
    with pytest.raises(ValueError, match="AutoencoderCompressor.load"):
        Default.load(fitted.save(tmp_path / "autoencoder.pt"))


def test_clustering_point_masses_asks_for_no_more_clusters_than_values(spikes):
    """Restored spikes that take 2 distinct values, clustered with k = 3: two clusters, no warning."""
    import warnings

    waveforms, labels, _ = spikes
    two = np.where((labels[:, None, None] == 0), waveforms[labels == 0].mean(0), waveforms[labels != 0].mean(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clusters = cluster_spikes(two.astype(np.float32), "pca_kmeans", n_clusters=3)
    assert len(np.unique(clusters)) == 2
    expected = (np.sum(labels == 0) + np.bincount(labels)[1:].max()) / len(labels)
    assert matched_accuracy(labels, clusters) == pytest.approx(expected)
