import hashlib
import json

import numpy as np
import pytest

from shared.benchmark import DOMAINS, build_benchmark, load_manifest
from shared.benchmark.__main__ import main as benchmark_cli
from shared.datasets import list_pairs, read_dpo_csv
from shared.io import read_image, read_mask


@pytest.fixture(scope="module")
def bench20(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench20")
    assert benchmark_cli(["--out", str(out), "--n-per-domain", "20", "--size", "96", "--seed", "3"]) == 0
    return out


def test_cli_writes_all_domains_in_medclip_sam_layout(bench20):
    items = load_manifest(bench20)
    domains = {it.domain for it in items}
    assert domains == set(DOMAINS) and len(domains) >= 3
    for domain in domains:
        positives = [it for it in items if it.domain == domain and it.label == "tumor"]
        normals = [it for it in items if it.domain == domain and it.label == "normal"]
        assert len(positives) == 20 and len(normals) == 5
        assert {it.split for it in positives} == {"train", "val", "test"}
        n_listed = sum(len(list_pairs(bench20, domain, s)) for s in ("train", "val", "test"))
        assert n_listed == 25


def test_outside_mask_equals_gt_negative_exactly(bench20):
    for it in load_manifest(bench20):
        image = (read_image(it.image) * 255).round().astype(np.uint8)
        mask = read_mask(it.mask)
        if it.label == "normal":
            assert it.gt_negative is None and not mask.any()
            continue
        neg = (read_image(it.gt_negative) * 255).round().astype(np.uint8)
        assert mask.any(), it.id
        np.testing.assert_array_equal(image[~mask], neg[~mask], err_msg=it.id)
        # and the lesion really changes the image inside its mask
        assert np.abs(image[mask].astype(int) - neg[mask]).mean() > 3, it.id


def test_manifest_and_dpo_csv_agree(bench20):
    items = {it.id: it for it in load_manifest(bench20)}
    rows = read_dpo_csv(bench20 / "dpo_pairs.csv")
    assert len(rows) == sum(it.label == "tumor" for it in items.values())
    for row in rows:
        item = items[row.filename.rsplit("/", 1)[1][:-4]]
        assert (bench20 / row.filename).resolve() == item.image
        assert (bench20 / row.filename_neg).resolve() == item.gt_negative
        assert row.caption == item.caption and "no signs of pathology" in row.caption_neg
    lesion = next(it.lesion for it in items.values() if it.lesion)
    assert {"kind", "radius", "irregularity", "margin", "cy", "cx"} <= set(lesion)


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = _digest(build_benchmark(tmp_path / "a", domains=("breast_us", "retina"), n_per_domain=3,
                                size=64, seed=7).parent)
    b = _digest(build_benchmark(tmp_path / "b", domains=("breast_us", "retina"), n_per_domain=3,
                                size=64, seed=7).parent)
    c = _digest(build_benchmark(tmp_path / "c", domains=("breast_us", "retina"), n_per_domain=3,
                                size=64, seed=8).parent)
    assert a == b
    assert a != c
    # a domain's files do not depend on which other domains are built
    d = _digest(build_benchmark(tmp_path / "d", domains=("retina",), n_per_domain=3, size=64,
                                seed=7).parent)
    assert {k: v for k, v in a.items() if k.startswith("retina/")} == \
        {k: v for k, v in d.items() if k.startswith("retina/")}


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown domain"):
        build_benchmark(tmp_path, domains=("liver_ct",), n_per_domain=1)
    with pytest.raises(ValueError, match="size"):
        build_benchmark(tmp_path, n_per_domain=1, size=8)


def test_rebuild_in_place_leaves_no_stale_files(tmp_path, capsys):
    from shared.benchmark.__main__ import main

    build_benchmark(tmp_path / "x", domains=("brain_mri", "retina"), n_per_domain=6, size=64, seed=0)
    (tmp_path / "x" / "notes.txt").write_text("the user's own file")
    again = build_benchmark(tmp_path / "x", domains=("brain_mri",), n_per_domain=2, size=32, seed=1)
    fresh = build_benchmark(tmp_path / "y", domains=("brain_mri",), n_per_domain=2, size=32, seed=1)
    rebuilt = _digest(again.parent)
    assert rebuilt.pop("notes.txt") and rebuilt == _digest(fresh.parent)  # was: 64² and retina left
    with pytest.raises(ValueError, match="is not empty and holds no benchmark"):
        build_benchmark(tmp_path / "x" / "brain_mri", n_per_domain=1, size=32)
    # a generator run's --out holds a manifest.jsonl too (sixth sweep: it was overwritten)
    gen_out = tmp_path / "gen"
    gen_out.mkdir()
    (gen_out / "manifest.jsonl").write_text('{"id": "a", "negatives": []}\n')
    with pytest.raises(ValueError, match="holds no benchmark"):
        build_benchmark(gen_out, n_per_domain=1, size=32)
    assert (gen_out / "manifest.jsonl").read_text().startswith('{"id": "a"')
    from shared.benchmark import load_manifest
    from shared.io import InputError

    with pytest.raises(InputError, match=r"manifest.jsonl:1: not a benchmark manifest line "
                                         r"\(no field 'domain'\)"):
        load_manifest(gen_out)  # was: KeyError traceback
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):  # was numpy's wording
        build_benchmark(tmp_path / "z", n_per_domain=1, size=32, seed=-1)
    assert main(["--out", str(tmp_path / "w"), "--domains", "retina", "--n-per-domain", "2",
                 "--size", "32"]) == 0
    assert "no positives in retina/val, retina/test" in capsys.readouterr().err


def test_preview_contact_sheet(tmp_path):
    from shared.benchmark.preview import contact_sheet

    manifest = build_benchmark(tmp_path, domains=("brain_mri",), n_per_domain=2, size=64, seed=0)
    sheet = read_image(contact_sheet(manifest.parent, tmp_path / "sheet.png"))
    assert sheet.shape[0] >= 64 and sheet.shape[1] >= 64 * 7
    assert json.loads((tmp_path / "benchmark.json").read_text())["size"] == 64


def test_external_set_uses_another_source_all_test(tmp_path):
    """The external brain set: every image in the test split, drawn from emri_small (not the MNI
    template the training split uses), with the brain domain's lesions and exact GT negatives."""
    from shared.benchmark.anatomy import SOURCES
    from shared.benchmark.external import ExternalBrainMR

    manifest = build_benchmark(tmp_path / "ext", domains=("brain_mri",), n_per_domain=4, size=64,
                               seed=0, external=True)
    items = load_manifest(manifest)
    assert {it.split for it in items} == {"test"} and len(items) == 4 + 1
    normal = read_image(next(it.image for it in items if it.label == "normal"))
    rng = np.random.default_rng([0, DOMAINS.index("brain_mri"), 0, False])
    ext, _ = ExternalBrainMR().sample(rng, 64)
    rng = np.random.default_rng([0, DOMAINS.index("brain_mri"), 0, False])
    mni, _ = SOURCES["brain_mri"]().sample(rng, 64)
    assert np.abs(normal - ext).max() <= 1 / 255 + 1e-6  # the external source's draw, as uint8
    assert np.abs(normal - mni).max() > 0.2
    pos = next(it for it in items if it.label == "tumor")
    outside = ~read_mask(pos.mask)
    np.testing.assert_array_equal(read_image(pos.image)[outside], read_image(pos.gt_negative)[outside])
    with pytest.raises(ValueError, match="no external anatomy source"):
        build_benchmark(tmp_path / "bad", domains=("retina",), n_per_domain=2, size=64,
                        external=True)


def test_external_ultrasound_is_a_real_scan_not_the_procedural_one(tmp_path):
    """The breast domain's external set draws crops of a real B-mode scan (pydicom-data ALOKA),
    never the procedural generator the training split uses; exact GT negatives."""
    from shared.benchmark.anatomy import SOURCES
    from shared.benchmark.external import ExternalUltrasound

    manifest = build_benchmark(tmp_path / "us", domains=("breast_us",), n_per_domain=3, size=64,
                               seed=0, external=True)
    items = load_manifest(manifest)
    assert {it.split for it in items} == {"test"}
    normal = read_image(next(it.image for it in items if it.label == "normal"))
    rng = np.random.default_rng([0, DOMAINS.index("breast_us"), 0, False])
    real, _ = ExternalUltrasound().sample(rng, 64)
    assert np.abs(normal - real).max() <= 1 / 255 + 1e-6
    rng = np.random.default_rng([0, DOMAINS.index("breast_us"), 0, False])
    procedural, _ = SOURCES["breast_us"]().sample(rng, 64)
    assert np.abs(normal - procedural).mean() > 0.05
    pos = next(it for it in items if it.label == "tumor")
    outside = ~read_mask(pos.mask)
    np.testing.assert_array_equal(read_image(pos.image)[outside], read_image(pos.gt_negative)[outside])


def test_named_external_set_replaces_the_domain_default(tmp_path):
    """--external-source dipy_t2_head: the brain set's images are whole T2 slices of dipy's head
    (the held-out source's frames), not emri_small's; recorded in benchmark.json; a name for
    another domain, or without external, is refused."""
    from shared.benchmark.external import ExternalBrainMR, ExternalBrainT2

    manifest = build_benchmark(tmp_path / "t2", domains=("brain_mri",), n_per_domain=3, size=64,
                               seed=0, external=True, external_source="dipy_t2_head")
    items = load_manifest(manifest)
    assert {it.split for it in items} == {"test"}
    assert json.loads((tmp_path / "t2" / "benchmark.json").read_text())["external_source"] == "dipy_t2_head"
    normal = read_image(next(it.image for it in items if it.label == "normal"))
    rng = np.random.default_rng([0, DOMAINS.index("brain_mri"), 0, False])
    t2, tissue = ExternalBrainT2().sample(rng, 64)
    rng = np.random.default_rng([0, DOMAINS.index("brain_mri"), 0, False])
    emri, _ = ExternalBrainMR().sample(rng, 64)
    assert np.abs(normal - t2).max() <= 1 / 255 + 1e-6 and np.abs(normal - emri).max() > 0.2
    # a whole slice: dark background around the brain on every side, lesions centred inside it
    assert max(t2[0].max(), t2[-1].max(), t2[:, 0].max(), t2[:, -1].max()) < 0.1
    assert tissue.any() and np.median(t2[tissue]) > 0.1
    with pytest.raises(ValueError, match="is a brain_mri set"):
        build_benchmark(tmp_path / "bad", domains=("breast_us",), n_per_domain=2, size=64,
                        external=True, external_source="dipy_t2_head")
    with pytest.raises(ValueError, match="give external=True"):
        build_benchmark(tmp_path / "bad", domains=("brain_mri",), n_per_domain=2, size=64,
                        external_source="dipy_t2_head")


def test_hyperintense_t2_set_draws_bright_lesions_on_the_same_slices(tmp_path):
    """--external-source dipy_t2_head_hyperintense: the same slices as dipy_t2_head (normals
    identical), its lesions brighter than the tissue they replace and captioned "hyperintense",
    where dipy_t2_head's (the training lesion model) are darker; outside the mask every positive
    is its GT negative; the appearance is not one training can draw."""
    from shared.benchmark.lesions import PRESETS, TEST_PRESETS

    sets = {}
    for name in ("dipy_t2_head", "dipy_t2_head_hyperintense"):
        manifest = build_benchmark(tmp_path / name, domains=("brain_mri",), n_per_domain=6,
                                   size=64, seed=0, external=True, external_source=name)
        sets[name] = load_manifest(manifest)
    dark, bright = ([read_image(it.image) for it in sets[n] if it.label == "normal"] for n in sets)
    assert dark and all(np.array_equal(a, b) for a, b in zip(dark, bright, strict=True))
    change = {}  # per positive: mean change over the lesion's inner half (positive − GT negative)
    for name in sets:
        change[name] = []
        for it in (it for it in sets[name] if it.label == "tumor"):
            pos, neg, mask = read_image(it.image), read_image(it.gt_negative), read_mask(it.mask)
            assert np.array_equal(pos[~mask], neg[~mask])
            centre = np.array(np.nonzero(mask)).mean(1)[:, None, None]
            core = mask & (np.hypot(*(np.mgrid[:64, :64] - centre)) < 0.5 * it.lesion["radius"] * 64)
            change[name].append((pos[core] - neg[core]).mean())
            assert ("hyperintense" in it.caption) == (name == "dipy_t2_head_hyperintense")
    # bright on every positive; the T1-style mass darker on average (on dark T2 white matter a
    # hypointense core changes little: that set's lesions are faint by construction)
    assert min(change["dipy_t2_head_hyperintense"]) > 0.1 and np.mean(change["dipy_t2_head"]) < 0
    assert not set(TEST_PRESETS) & set(PRESETS)


def test_train_t2_look_makes_brain_training_lesions_bright_and_leaves_the_rest_alone(tmp_path):
    """--train-t2-look 1: every brain_mri training positive gets the T2 look (bright core,
    "hyperintense"), its GT negative is the same slice; validation, test and normal items and the
    other domain are byte-identical to a build without it (the coin has its own stream)."""
    kw = dict(domains=("brain_mri", "breast_us"), n_per_domain=9, size=64, seed=0)
    base = {it.id: it for it in load_manifest(build_benchmark(tmp_path / "a", **kw))}
    t2 = {it.id: it for it in load_manifest(build_benchmark(tmp_path / "b", **kw, train_t2_look=1.0))}
    assert base.keys() == t2.keys()
    changed = [k for k in base if base[k].image.read_bytes() != t2[k].image.read_bytes()]
    want = [k for k, it in base.items()
            if it.domain == "brain_mri" and it.split == "train" and it.label == "tumor"]
    assert want and changed == want
    for k in want:
        it, old = t2[k], base[k]
        assert it.lesion["kind"] == "hyperintense" and "hyperintense" in it.caption
        assert old.lesion["kind"] != "hyperintense"
        assert it.gt_negative.read_bytes() == old.gt_negative.read_bytes()  # same slice
        pos, neg, mask = read_image(it.image), read_image(it.gt_negative), read_mask(it.mask)
        assert np.array_equal(pos[~mask], neg[~mask]) and (pos[mask] - neg[mask]).mean() > 0
    half = load_manifest(build_benchmark(tmp_path / "c", **kw, train_t2_look=0.5))
    kinds = [it.lesion["kind"] == "hyperintense" for it in half if it.id in want]
    assert 0 < sum(kinds) < len(kinds)
    for bad in ({"train_t2_look": 1.5}, {"train_t2_look": 0.5, "domains": ("breast_us",)}):
        with pytest.raises(ValueError, match="train_t2_look"):
            build_benchmark(tmp_path / "d", **{**kw, **bad})


def test_aux_lesion_domains_are_training_only_and_leave_the_benchmark_unchanged(tmp_path):
    """--aux-per-source adds positives (and normals) on the auxiliary anatomy, all in the train
    split, with exact GT negatives and their own captions; the benchmark domains' files and
    manifest rows are byte-identical to a build without them."""
    from shared.benchmark.build import AUX_DOMAINS

    plain = build_benchmark(tmp_path / "plain", domains=("brain_mri",), n_per_domain=4, size=64,
                            seed=0)
    aux = build_benchmark(tmp_path / "aux", domains=("brain_mri",), n_per_domain=4, size=64,
                          seed=0, aux_per_source=3)
    base, more = load_manifest(plain), load_manifest(aux)
    extra = [it for it in more if it.domain in AUX_DOMAINS]
    assert [it.id for it in more if it.domain == "brain_mri"] == [it.id for it in base]
    for a, b in zip(base, [it for it in more if it.domain == "brain_mri"], strict=True):
        assert a.image.read_bytes() == b.image.read_bytes() and a.caption == b.caption
    assert {it.domain for it in extra} == set(AUX_DOMAINS) and {it.split for it in extra} == {"train"}
    assert len(extra) == len(AUX_DOMAINS) * (3 + 1)
    xray = next(it for it in extra if it.domain == "extremity_xray" and it.label == "tumor")
    assert "X-ray" in xray.caption and "opacity" in xray.caption  # the projection lesion's words
    outside = ~read_mask(xray.mask)
    assert read_mask(xray.mask).any()
    np.testing.assert_array_equal(read_image(xray.image)[outside], read_image(xray.gt_negative)[outside])


def test_manifest_path_that_is_not_a_manifest_is_an_input_error(tmp_path):
    from shared.benchmark import load_manifest
    from shared.io import InputError

    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(InputError, match="notes.txt:1: not a benchmark manifest line"):
        load_manifest(tmp_path / "notes.txt")
