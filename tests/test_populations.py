"""Tests for populations/: tables, synthetic NYC population invariants and marginals."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest

from populations import (
    AGE_BANDS,
    BOROUGHS,
    CATEGORICAL,
    DATA_DIR,
    EMPLOYED,
    GROUP_IDS,
    LABOR,
    OCCUPATIONS,
    SEXES,
    Population,
    load_tables,
    sample_population,
)
from populations.synthetic import allocate

N = 200_000
SEED = 20200301


def sigma_ok(count: np.ndarray, n: int, p: np.ndarray, k: float = 3.0) -> bool:
    """Binomial k-sigma check for every category.

    3 sigma for the headline marginals; checks repeated per borough/band use
    4 sigma so ~60 simultaneous checks don't fail by chance for other seeds.
    """
    count = np.asarray(count, dtype=float)
    sd = np.sqrt(n * p * (1 - p))
    return bool(np.all(np.abs(count - n * p) <= k * sd + 1e-9))


@pytest.fixture(scope="module")
def tables():
    return load_tables("nyc")


@pytest.fixture(scope="module")
def pop(tables):
    return sample_population(N, SEED, tables)


# ---------------------------------------------------------------- tables


def test_nyc_tables_match_label_constants_and_name_sources(tables):
    assert tables.boroughs == BOROUGHS
    assert tables.age_bands == AGE_BANDS
    assert tables.sexes == SEXES
    assert tables.occupations == OCCUPATIONS
    census = dict(zip(tables.boroughs, tables.borough_population.tolist()))
    assert census == {
        "Brooklyn": 2_736_074,
        "Queens": 2_405_464,
        "Manhattan": 1_694_251,
        "Bronx": 1_472_654,
        "Staten Island": 495_747,
    }
    for name, src in tables.sources.items():
        assert any(y in src for y in ("2019", "2020")), (name, src)
    for share in (tables.age_share, tables.sex_share, tables.household_share, tables.occupation_share):
        assert abs(share.sum() - 1) < 1e-12
    assert 2.4 < tables.mean_household_size < 2.7
    assert tables.occupation_lockdown_sensitivity[0] == 0
    assert np.all((tables.occupation_lockdown_sensitivity >= 0) & (tables.occupation_lockdown_sensitivity <= 1))


def _copy_tables(tmp_path):
    d = tmp_path / "tables"
    shutil.copytree(DATA_DIR, d)
    return d


@pytest.mark.parametrize(
    "fname, old, new, column",
    [
        ("age_bands.csv", "65A,65,,0.155", "65A,65,,0.145", "share"),  # sums to 0.99
        ("occupation.csv", "health,0.11,", "health,abc,", "share"),  # not a number
        ("sex.csv", "female,0.523", "female,-0.523", "share"),  # negative
        ("labour.csv", "school_enrollment", "enrollment", "school_enrollment"),  # missing column
        ("labour.csv", "65A,0.17,0.04,0.0", "65+,0.17,0.04,0.0", "age_band"),  # band mismatch
        ("boroughs.csv", "Queens,Queens County,2405464", "Queens,Queens County,", "population"),
        ("household_size.csv", "1,1,0.32", "1,1,1.32", "share"),  # outside [0, 1]
    ],
)
def test_malformed_table_names_file_and_column(tmp_path, fname, old, new, column):
    d = _copy_tables(tmp_path)
    path = d / fname
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    with pytest.raises(ValueError) as exc:
        load_tables(d)
    msg = str(exc.value)
    assert fname in msg and f"'{column}'" in msg, msg


def test_table_without_source_comment_is_rejected(tmp_path):
    d = _copy_tables(tmp_path)
    path = d / "sex.csv"
    path.write_text("\n".join(ln for ln in path.read_text().splitlines() if not ln.startswith("#")))
    with pytest.raises(ValueError, match=r"sex\.csv.*source"):
        load_tables(d)


def test_unknown_table_set_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="named table set"):
        load_tables(tmp_path / "nope")


def test_infeasible_household_table_raises(tmp_path):
    # all single-person households: every agent would head a household and be adult,
    # contradicting the 23.5% under-20 share
    d = _copy_tables(tmp_path)
    path = d / "household_size.csv"
    head = [ln for ln in path.read_text().splitlines() if ln.startswith("#")]
    path.write_text("\n".join(head + ["size,label,share", "1,1,1.0"]) + "\n")
    with pytest.raises(ValueError, match="adult"):
        sample_population(1000, 0, d)


# ---------------------------------------------------------------- population structure


def test_dtypes_and_labels(pop):
    assert isinstance(pop, Population)
    assert pop.n == N
    for key in CATEGORICAL:
        assert pop[key].dtype == np.int8, key
        assert pop[key].min() >= 0 and pop[key].max() < len(pop.labels[key]), key
    for key in GROUP_IDS:
        assert pop[key].dtype == np.int32, key
    assert pop.labels["labor"] == LABOR
    assert pop.labels["age_band"] == AGE_BANDS
    assert pop.bytes_per_agent == 5 * 1 + 3 * 4
    assert pop.nbytes == N * 17
    pop.validate()


def test_borough_allocation_is_proportional_to_census(pop, tables):
    counts = np.bincount(pop["borough"], minlength=len(BOROUGHS))
    expected = N * tables.borough_population / tables.borough_population.sum()
    assert counts.sum() == N
    assert np.all(np.abs(counts - expected) < 1)
    # agent ids are borough-major
    assert np.all(np.diff(pop["borough"]) >= 0)
    assert list(allocate(10, np.array([1.0, 1.0, 1.0]))) == [4, 3, 3]


def test_age_and_sex_marginals(pop, tables):
    assert sigma_ok(np.bincount(pop["age_band"], minlength=6), N, tables.age_share)
    assert sigma_ok(np.bincount(pop["sex"], minlength=2), N, tables.sex_share)
    # the head adjustment is per borough, so each borough matches the citywide marginal too
    for b in range(len(BOROUGHS)):
        ages = pop["age_band"][pop["borough"] == b]
        assert sigma_ok(np.bincount(ages, minlength=6), ages.size, tables.age_share, 4), BOROUGHS[b]


def test_households_contiguous_with_adult_first_member(pop, tables):
    hh = pop["household"]
    assert hh[0] == 0 and hh[-1] == pop.households - 1
    assert set(np.unique(np.diff(hh)).tolist()) <= {0, 1}
    off = pop.household_offsets()
    assert off[0] == 0 and off[-1] == N
    assert np.all(hh[off[:-1]] == np.arange(pop.households))
    first_age = pop["age_band"][off[:-1]]
    assert np.all(tables.adult_mask[first_age])
    # children exist and are never first members
    assert np.all(np.diff(off)[np.isin(np.arange(pop.households), hh[pop["age_band"] == 0])] >= 2)
    # households never span boroughs
    assert np.all(pop["borough"][off[:-1]] == pop["borough"][off[1:] - 1])


def test_household_sizes_follow_table(pop, tables):
    sizes = pop.household_sizes()
    off = pop.household_offsets()
    # the last household of each borough is cut to fit; leave those out
    last_of_borough = np.flatnonzero(np.diff(pop["borough"][off[1:] - 1], append=127) != 0)
    keep = np.ones(pop.households, dtype=bool)
    keep[last_of_borough] = False
    s = sizes[keep]
    counts = np.array([(s == v).sum() for v in tables.household_sizes])
    assert counts.sum() == s.size  # no size outside the table
    assert sigma_ok(counts, s.size, tables.household_share, 4)
    assert abs(s.mean() - tables.mean_household_size) < 0.02
    assert np.all(sizes >= 1) and sizes.max() <= tables.household_sizes.max()


def test_labour_and_occupation_consistency(pop, tables):
    labor, occ, work, school = pop["labor"], pop["occupation"], pop["workplace"], pop["school"]
    emp = labor == EMPLOYED
    assert np.array_equal(occ != 0, emp)
    assert np.array_equal(work >= 0, emp)
    # employment and labour-force rates by age band
    for a in range(len(AGE_BANDS)):
        m = pop["age_band"] == a
        k = int(m.sum())
        p_emp = tables.participation[a] * (1 - tables.unemployment[a])
        counts = np.array([(labor[m] == c).sum() for c in range(3)])
        p = np.array([1 - tables.participation[a], p_emp, tables.participation[a] - p_emp])
        assert sigma_ok(counts, k, p, 4), AGE_BANDS[a]
        # students only where enrollment > 0, at the tabled rate
        stu = int((school[m] >= 0).sum())
        assert sigma_ok(np.array([stu]), k, np.array([tables.school_enrollment[a]]), 4), AGE_BANDS[a]
    # baseline unemployment ~4% of the labour force
    lf = labor > 0
    assert abs((labor[lf] == 2).mean() - 0.04) < 0.005
    # children are mostly students
    assert (school[pop["age_band"] == 0] >= 0).mean() > 0.75
    # occupation shares among the employed
    occ_counts = np.bincount(occ[emp], minlength=len(OCCUPATIONS))[1:]
    assert sigma_ok(occ_counts, int(emp.sum()), tables.occupation_share, 4)


def _groups_are_pure(ids: np.ndarray, *keys: np.ndarray) -> bool:
    m = ids >= 0
    combo = np.zeros(int(m.sum()), dtype=np.int64)
    for k in keys:
        combo = combo * 128 + k[m]
    pairs = np.unique(np.stack([ids[m].astype(np.int64), combo]), axis=1)
    return pairs.shape[1] == np.unique(ids[m]).size


def test_workplaces_and_classes(pop):
    work, school = pop["workplace"], pop["school"]
    # dense global ids
    assert np.array_equal(np.unique(work[work >= 0]), np.arange(pop.workplaces))
    assert np.array_equal(np.unique(school[school >= 0]), np.arange(pop.classes))
    # groups don't mix boroughs/occupations (workplaces) or boroughs/age bands (classes)
    assert _groups_are_pure(work, pop["borough"], pop["occupation"])
    assert _groups_are_pure(school, pop["borough"], pop["age_band"])
    wsize = pop.group_sizes("workplace")
    csize = pop.group_sizes("school")
    assert abs(wsize.mean() - 10) < 0.5
    assert wsize.var() > 50  # geometric-like spread (var = 90 for mean 10)
    assert abs(csize.mean() - 20) < 1.0
    assert csize.min() >= 1
    # housemates are not systematically co-workers (members are shuffled before grouping)
    hh, emp = pop["household"], work >= 0
    same_hh = (hh[1:] == hh[:-1]) & emp[1:] & emp[:-1]
    assert (work[1:][same_hh] == work[:-1][same_hh]).mean() < 0.05


def test_group_size_parameters(tables):
    p = sample_population(50_000, 3, tables, workplace_mean_size=4.0, class_mean_size=30.0)
    assert abs(p.group_sizes("workplace").mean() - 4) < 0.3
    assert abs(p.group_sizes("school").mean() - 30) < 2.0
    p.validate()


def test_determinism_and_seed_dependence(tables):
    a = sample_population(20_000, 7, tables)
    b = sample_population(20_000, 7, "nyc")
    c = sample_population(20_000, 8, tables)
    for key in a.attributes:
        assert np.array_equal(a[key], b[key]), key
    assert (a.households, a.workplaces, a.classes) == (b.households, b.workplaces, b.classes)
    assert not np.array_equal(a["age_band"], c["age_band"])
    assert not np.array_equal(a["workplace"], c["workplace"])


def test_scale_to_sets_agent_weight(tables):
    p = sample_population(1000, 0, tables)
    assert p.agent_weight == pytest.approx(tables.borough_population.sum() / 1000)
    q = sample_population(1000, 0, tables, scale_to=8_400_000)
    assert q.agent_weight == pytest.approx(8400.0)
    assert np.array_equal(p["age_band"], q["age_band"])


@pytest.mark.parametrize("n", [0, -5, 2.5, True])
def test_bad_n_raises(n):
    with pytest.raises(ValueError, match="positive integer"):
        sample_population(n, 0)


def test_tiny_populations_stay_valid(tables):
    for n in (1, 2, 7, 50):
        with warnings.catch_warnings():
            # tiny boroughs may have more household heads than the adult share allows;
            # the sampler warns (adults over-represented) rather than failing
            warnings.simplefilter("ignore")
            p = sample_population(n, 1, tables)
        assert p.n == n
        p.validate()
        assert np.all(tables.adult_mask[p["age_band"][p.household_offsets()[:-1]]])


def test_arrow_and_polars_export(pop):
    t = pop.to_arrow()
    assert t.num_rows == N and t.column_names == list(pop.attributes)
    assert np.array_equal(t.column("age_band").to_numpy(), pop["age_band"])
    df = pop.to_polars(categorical=True)
    assert df.height == N
    assert df["borough"].cast(str).to_list()[0] == BOROUGHS[pop["borough"][0]]


def test_population_rejects_wrong_dtype(pop):
    attrs = dict(pop.attributes)
    attrs["sex"] = attrs["sex"].astype(np.int64)
    with pytest.raises(ValueError, match="int8"):
        Population(n=pop.n, attributes=attrs, labels=pop.labels, households=pop.households)
