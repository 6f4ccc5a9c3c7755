"""The adaptive codebook compressor and the k-means baseline: fidelity against the true spike on the neurons of the
fit and on neurons it was not fitted to, exact stream round trips, and errors."""

from __future__ import annotations

import numpy as np
import pytest

from spikeinterface_elvisort.compression import AdaptiveCodebookCompressor, KMeansCompressor, sndr

from conftest import make_spikes


def other_neurons(num_spikes=900, seed=1):
    """Spikes of three units that the fit never saw: the templates shifted by 5 samples, channels reversed,
    inverted and rescaled; (spikes, labels, clean)."""
    spikes, labels, clean = make_spikes(num_spikes, num_samples=24, seed=seed, noise=0.0)
    clean = -0.8 * np.roll(clean, 5, axis=1)[:, :, ::-1]
    noisy = clean + 0.05 * np.random.default_rng(seed).standard_normal(clean.shape)
    return noisy.astype(np.float32), labels, clean.astype(np.float32)


@pytest.fixture(scope="module")
def fit_spikes():
    return make_spikes(600, num_samples=24)


def test_kmeans_baseline_denoises_the_fitted_units_and_a_residual_stage_adds_detail(fit_spikes):
    waveforms, _, clean = fit_spikes
    train, test, truth = waveforms[:300], waveforms[300:], clean[300:]
    one = KMeansCompressor((3,)).fit(train)
    two = KMeansCompressor((3, 16)).fit(train)
    codes = one.encode(test)
    assert codes.shape == (300, 1) and codes.dtype == np.int64
    # one codeword per unit is nearly the unit's mean: closer to the truth than the recorded spike
    assert sndr(truth, one.decode(codes)).mean() > sndr(truth, test).mean() + 3
    assert sndr(test, two.reconstruct(test)).mean() > sndr(test, one.reconstruct(test)).mean()
    assert 8 * one.coded_bytes(codes) / len(codes) < 2.0  # about log2(3) bits per spike
    with pytest.raises(ValueError, match="at least 16 spikes"):
        KMeansCompressor((16,)).fit(train[:5])
    with pytest.raises(ValueError, match="positive integers"):
        KMeansCompressor((0,))


def test_adaptive_codebook_learns_neurons_it_was_not_fitted_to(fit_spikes):
    noisy, _, truth = other_neurons()
    compressor = AdaptiveCodebookCompressor(codebook_size=4, max_codewords=16, n_components=8).fit(fit_spikes[0])
    data = compressor.compress(noisy)
    restored = compressor.decompress(data, len(noisy))
    kmeans = KMeansCompressor((16,)).fit(fit_spikes[0]).reconstruct(noisy)
    recorded = sndr(truth, noisy).mean()
    adaptive = sndr(truth, restored).mean()
    # after its first spikes the stream codes each neuron as one learned codeword: closer to the truth than the
    # recorded spike, while k-means fitted on other neurons restores shapes it does not hold
    assert adaptive > recorded + 3
    assert sndr(truth, kmeans).mean() < recorded
    assert sndr(truth[-300:], restored[-300:]).mean() > sndr(truth[:50], restored[:50]).mean()
    ratio = noisy.size * 16 / (8 * len(data))
    assert ratio > 20


def test_adaptive_codebook_on_the_fitted_neurons_and_its_stream(fit_spikes, tmp_path):
    waveforms, _, clean = fit_spikes
    train, test, truth = waveforms[:300], waveforms[300:], clean[300:]
    before = test.copy()
    compressor = AdaptiveCodebookCompressor(codebook_size=4, max_codewords=16, n_components=8).fit(train)
    data = compressor.compress(test)
    np.testing.assert_array_equal(test, before)  # the input is not modified
    assert compressor.compress(test) == data  # deterministic
    restored = compressor.decompress(data, len(test))
    assert restored.shape == test.shape and restored.dtype == np.float32
    assert sndr(truth, restored).mean() > sndr(truth, test).mean() + 3
    # the state rebuilds the same codec: same bytes, same spikes back
    again = AdaptiveCodebookCompressor.from_state(compressor.state())
    assert again.compress(test) == data
    np.testing.assert_array_equal(again.decompress(data, len(test)), restored)
    np.testing.assert_array_equal(compressor.reconstruct(test), restored)
    loaded = AdaptiveCodebookCompressor.load(compressor.save(tmp_path / "codec.pt"))
    assert loaded.compress(test) == data


def test_adaptive_codebook_errors(fit_spikes):
    waveforms = fit_spikes[0]
    with pytest.raises(ValueError, match="not fitted"):
        AdaptiveCodebookCompressor().compress(waveforms)
    with pytest.raises(ValueError, match="raise max_codewords"):
        AdaptiveCodebookCompressor(codebook_size=32, max_codewords=8).fit(waveforms)
    with pytest.raises(ValueError, match="at least codebook_size"):
        AdaptiveCodebookCompressor(codebook_size=16).fit(waveforms[:10])
    with pytest.raises(ValueError, match="fallback_step"):
        AdaptiveCodebookCompressor(fallback_step=0).fit(waveforms)
    compressor = AdaptiveCodebookCompressor(codebook_size=4, n_components=8).fit(waveforms)
    assert compressor.compress(waveforms[:0]) == b"" and compressor.decompress(b"", 0).shape == (0, 24, 4)
    with pytest.raises(ValueError, match="distinct spikes"):
        AdaptiveCodebookCompressor(codebook_size=2, n_components=4).fit(np.ones((40, 24, 4)))
    with pytest.raises(ValueError, match="as in fit"):
        compressor.compress(waveforms[:, :12])
    with pytest.raises(ValueError, match="unsupported"):
        AdaptiveCodebookCompressor.from_state({"format_version": 99})


def test_a_sorting_analyzer_compresses_with_the_adaptive_codec_by_default(tmp_path):
    from spikeinterface.core import create_sorting_analyzer, generate_ground_truth_recording

    from spikeinterface_elvisort.compression import compress_sorting_analyzer, extract_spike_waveforms, load_compressed

    recording, sorting = generate_ground_truth_recording(
        num_channels=8, num_units=3, durations=[10.0], sampling_frequency=32000.0, seed=0
    )
    analyzer = create_sorting_analyzer(sorting, recording, format="memory", sparse=False)
    kwargs = dict(codebook_size=4, max_codewords=16, n_components=8)
    summary = compress_sorting_analyzer(analyzer, tmp_path / "spikes.npz", compressor_kwargs=kwargs)
    compressor = summary["compressor"]
    assert isinstance(compressor, AdaptiveCodebookCompressor) and summary["payload_ratio"] > 20
    restored = load_compressed(tmp_path / "spikes.npz")
    waveforms, _, channels = extract_spike_waveforms(recording, sorting, num_channels=4)
    np.testing.assert_array_equal(restored["waveforms"], compressor.reconstruct(waveforms))
    np.testing.assert_array_equal(restored["channel_indices"], channels)
    compress_sorting_analyzer(analyzer, tmp_path / "bare.npz", compressor, include_compressor=False)
    bare = load_compressed(tmp_path / "bare.npz", compressor)
    np.testing.assert_array_equal(bare["waveforms"], restored["waveforms"])
    with pytest.raises(ValueError, match="AdaptiveCodebookCompressor.load"):
        load_compressed(tmp_path / "bare.npz")
    with pytest.raises(ValueError, match="written by AdaptiveCodebookCompressor"):
        load_compressed(tmp_path / "bare.npz", KMeansCompressor((2,)))
    # the restored spikes keep the units: each is closer to its own unit's mean than the recorded spikes are
    units = sorting.to_spike_vector()["unit_index"]
    means = np.stack([waveforms[units == u].mean(axis=0) for u in range(3)])[units]
    assert sndr(means, restored["waveforms"]).mean() > sndr(means, waveforms).mean()


def test_bench_compression_scores_against_the_twin_and_finds_the_best_baseline(fit_spikes):
    """benchmarks/bench_compression.py's scoring on generated spikes: the recorded spike's distance to the truth,
    the rows of every family, and the best baseline at a level (seed versions and other families never count)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_compression.py"
    spec = importlib.util.spec_from_file_location("bench_compression", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    noisy, labels, truth = other_neurons(400)
    test = bench.Test(noisy, truth, bench.unit_means(noisy, labels), labels)
    recorded = test.row("input", "recorded spike", noisy, test=test)
    assert recorded["sndr_twin_db"] == pytest.approx(float(sndr(truth, noisy).mean()))
    rows = [recorded] + bench.baseline_rows(fit_spikes[0], test, levels=(8, 32), kmeans_sizes=((16,), (64, 64)))
    rows += bench.adaptive_rows(fit_spikes[0], test, ["codebook_size=4,max_codewords=16,n_components=8"])
    families = {row["family"] for row in rows}
    assert {"pca (strong)", "dct (seed)", "k-means", "adaptive codebook"} <= families
    best = bench.best_baseline(rows, recorded["sndr_twin_db"])
    assert best["family"] in bench.BASELINES and best["sndr_twin_db"] >= recorded["sndr_twin_db"]
    assert all(
        r["ratio"] <= best["ratio"]
        for r in rows
        if r["family"] in bench.BASELINES and r["sndr_twin_db"] >= recorded["sndr_twin_db"]
    )
    summary = bench.summarise(rows, "generated", "cross", labels)
    adaptive = next(s for s in summary if s["method"].startswith("adaptive"))
    # on neurons it was not fitted to, the adaptive codec is closer to the truth than the recorded spike
    assert adaptive["closer_than_recorded"] and 0 <= adaptive["pca_kmeans_after"] <= 1
    # the clustering accuracy of every envelope point: each family has some; three well separated units sort well
    bench.sort_envelopes(rows, labels)
    assert recorded["pca_kmeans_after"] > 0.95 and recorded["pca_kmeans_twin"] >= recorded["pca_kmeans_after"]
    for family in families - {"input"}:
        scored = [r["pca_kmeans_after"] for r in rows if r["family"] == family and "pca_kmeans_after" in r]
        assert scored and all(0 <= value <= 1 for value in scored), family
    # a transform that keeps the shapes keeps the sorting; k-means fitted on other neurons does not
    best_pca = max((r for r in rows if r["family"] == "pca (strong)"), key=lambda r: r["sndr_twin_db"])
    assert best_pca["pca_kmeans_after"] > recorded["pca_kmeans_after"] - 0.05
    assert min(r.get("pca_kmeans_after", 1) for r in rows if r["family"] == "k-means") < 0.8
