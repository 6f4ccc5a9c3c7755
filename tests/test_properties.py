"""Property tests (hypothesis): parameter validation accepts exactly the declared values and names the parameter it
refuses; snippets at the edges of segments (first and last milliseconds, segment boundaries) are exact."""

from __future__ import annotations

import copy
import math
import numbers

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from spikeinterface_elvisort.checks import check_params  # noqa: E402
from spikeinterface_elvisort.params import DEFAULT_PARAMS, PARAMS  # noqa: E402
from spikeinterface_elvisort.snippets import extract_snippets  # noqa: E402

from conftest import expected_snippets, peaks_at, probe_recording  # noqa: E402

BOUNDS = {name: param.bounds for name, param in PARAMS.items() if param.bounds is not None}
FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ANY_VALUE = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 0, 0.0, -1, 1, 1.0, True, "1"]),
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)


def _valid_number(name, value) -> bool:
    low, high, integer = BOUNDS[name]
    if any(value == special and type(value) is type(special) for special in PARAMS[name].also):
        return True
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real):
        return False
    if not math.isfinite(value):
        return False
    return value >= low and (high is None or value <= high)


def _near_bounds(name):
    low, high, integer = BOUNDS[name]
    values = [low, low - 1, low - 1e-9, low + 1] + ([] if high is None else [high, high + 1, high + 1e-9])
    return st.sampled_from([int(v) if integer and float(v).is_integer() else v for v in values])


NUMBER = st.sampled_from(sorted(BOUNDS)).flatmap(lambda name: st.tuples(st.just(name), st.one_of(_near_bounds(name),
                                                                                                  ANY_VALUE)))
MANY = settings(max_examples=300, deadline=None)  # check_params takes microseconds


@MANY
@given(name_value=NUMBER)
def test_numeric_parameters_accept_exactly_their_declared_range(name_value):
    name, value = name_value
    params = copy.deepcopy(DEFAULT_PARAMS)
    params[name] = value
    expected_valid = _valid_number(name, value)
    if name in ("freq_min", "freq_max") and expected_valid:
        expected_valid = params["freq_min"] < params["freq_max"]
    if expected_valid:
        assert check_params(params)[name] == value
    else:
        with pytest.raises(ValueError, match=name):
            check_params(params)


@MANY
@given(name=st.sampled_from(sorted(PARAMS)), value=ANY_VALUE)
def test_any_value_is_accepted_or_refused_with_a_value_error_naming_the_parameter(name, value):
    params = copy.deepcopy(DEFAULT_PARAMS)
    params[name] = value
    try:
        check_params(params)
    except ValueError as error:
        assert name in str(error)


@FEW
@given(name=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=20).filter(lambda n: n not in PARAMS))
def test_unknown_names_are_refused_by_name(name):
    params = copy.deepcopy(DEFAULT_PARAMS) | {name: 1}
    with pytest.raises(ValueError, match=f"Unknown parameter.*{name}"):
        check_params(params)


# -- snippets at the edges -----------------------------------------------------------------------------------------

LENGTHS = (157, 90)  # two segments of different lengths
NBEFORE, NAFTER = 6, 9
NUM_CHANNELS = 4
NEIGHBOURS = np.array([[0, 1, 2], [0, 1, 2], [1, 2, 3], [1, 2, 3]])


def _segments():
    rng = np.random.default_rng(0)
    # distinct values everywhere, so that any misplaced sample shows
    return [rng.permutation(length * NUM_CHANNELS).reshape(length, NUM_CHANNELS).astype(np.float32) + 1
            for length in LENGTHS]


def _edge_sample(segment_index):
    """A sample within a snippet of either end of the segment, or anywhere."""
    length = LENGTHS[segment_index]
    return st.one_of(
        st.integers(0, NBEFORE + 1),
        st.integers(length - NAFTER - 1, length - 1),
        st.integers(0, length - 1),
    )


EVENT = st.integers(0, 1).flatmap(
    lambda segment: st.tuples(st.just(segment), _edge_sample(segment), st.integers(0, NUM_CHANNELS - 1))
)


@FEW
@given(events=st.lists(EVENT, min_size=1, max_size=12), chunk_samples=st.integers(1, 200))
def test_snippets_at_segment_edges_are_exact(events, chunk_samples):
    segments = _segments()
    recording = probe_recording(segments)
    segment_index, samples, channels = (list(column) for column in zip(*events))
    peaks = peaks_at(samples=samples, channels=channels, segments=segment_index)
    snippets = extract_snippets(recording, peaks, NEIGHBOURS, NBEFORE, NAFTER, chunk_samples=chunk_samples)
    expected = expected_snippets(segments, peaks, NEIGHBOURS, NBEFORE, NAFTER)
    np.testing.assert_array_equal(snippets, expected)
    # samples outside the segment are zeros, never the other segment's samples
    for index, (segment, sample) in enumerate(zip(segment_index, samples)):
        window = np.arange(-NBEFORE, NAFTER) + sample
        outside = (window < 0) | (window >= LENGTHS[segment])
        assert np.all(snippets[index, outside] == 0)
        assert np.all(snippets[index, ~outside] != 0)
