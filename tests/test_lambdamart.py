"""The LambdaMART re-ranker (`[rerank] kind = "lambdamart"`): LightGBM trees, trained, saved, exported
to ONNX-ML and served by the same ranker as the MLP, alone or behind it in a cascade. The tests
that train (a few dozen trees on a few thousand rows, under a second) sit in the training tier."""

import json
import shutil

import numpy as np
import pytest

from shopsearch.core.hybrid import FEATURE_NAMES, OnnxReranker
from shopsearch.core.reranker import (
    RERANKER_DIR, RERANKER_TREES, RERANKER_WEIGHTS, RerankerCascade, RerankerConfig, RerankerMLP, RerankerTrees,
    float32_exact_thresholds, install_reranker, load_reranker, save_reranker,
)
from shopsearch.errors import ArtifactError, ConfigError, ExportParityError
from shopsearch.export.reranker import export_reranker
from shopsearch.train.reranker import train_reranker
from tests.test_hybrid import _signal_lists

TREES = RerankerConfig(kind="lambdamart", trees=40, min_data_in_leaf=5)


def _split_points(booster) -> list[tuple[int, float]]:
    """(feature, threshold) of every split of every tree, as LightGBM holds them (doubles)."""
    found = []

    def walk(node):
        if "split_feature" in node:
            found.append((node["split_feature"], node["threshold"]))
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return found


def _rows_at_split_points(booster, base: np.ndarray) -> np.ndarray:
    """Rows whose feature sits on a split's threshold in float32, or one float32 step either side:
    where a float32 runtime and LightGBM's doubles can branch differently."""
    rows = []
    for feature, threshold in _split_points(booster):
        t32 = np.float32(threshold)
        for value in (t32, np.nextafter(t32, np.float32(np.inf)), np.nextafter(t32, np.float32(-np.inf))):
            row = base[len(rows) % len(base)].copy()
            row[feature] = value
            rows.append(row)
    return np.array(rows, np.float32)


@pytest.mark.training
def test_lambdamart_learns_the_signal_in_its_features():
    model = train_reranker(_signal_lists(), TREES, log=lambda m: None)
    held_out = _signal_lists(n_lists=10, seed=1)[0].features
    assert isinstance(model, RerankerTrees) and model.n_trees == TREES.trees
    assert np.corrcoef(model(held_out), held_out[:, 3])[0, 1] > 0.8


@pytest.mark.training
def test_floored_thresholds_keep_lightgbm_predictions_and_make_the_onnx_export_exact_at_every_split(tmp_path):
    import lightgbm

    lists = _signal_lists()
    raw = lightgbm.train(dict(objective="lambdarank", num_leaves=15, min_data_in_leaf=5, learning_rate=0.1, verbose=-1, seed=0),
                         lightgbm.Dataset(np.concatenate([c.features for c in lists]), np.concatenate([c.gains for c in lists]),
                                          group=[len(c.gains) for c in lists]), num_boost_round=40)
    probe = _rows_at_split_points(raw, np.concatenate([c.features for c in _signal_lists(n_lists=3, seed=2)]))
    floored = RerankerTrees(lightgbm.Booster(model_str=float32_exact_thresholds(raw.model_to_string())))
    # On float32 features the floored trees are the same function as LightGBM's own.
    np.testing.assert_array_equal(floored.booster.predict(probe), raw.predict(probe))
    export_reranker(floored, tmp_path / "floored.onnx", probe)  # its gate covers the split points
    np.testing.assert_allclose(OnnxReranker(tmp_path / "floored.onnx")(probe), floored(probe), atol=1e-5)
    # Why: the thresholds as trained, rounded to nearest by the converter, branch the other way on some rows.
    with pytest.raises(ExportParityError, match="raw.onnx drifted"):
        export_reranker(RerankerTrees(raw), tmp_path / "raw.onnx", probe)


@pytest.mark.training
def test_the_trees_export_to_onnx_with_the_mlps_inputs_and_outputs(tmp_path):
    model = train_reranker(_signal_lists(), TREES, log=lambda m: None)
    probe = np.concatenate([c.features for c in _signal_lists(n_lists=10, seed=1)])
    report = export_reranker(model, tmp_path / "reranker.onnx", probe)
    assert report["kind"] == "lambdamart" and report["trees"] == TREES.trees and report["max_abs_diff"] <= 1e-4
    served = OnnxReranker(tmp_path / "reranker.onnx")
    assert served(probe[:7]).shape == (7,) and served(probe[:0]).shape == (0,)
    np.testing.assert_allclose(served(probe), model(probe), atol=1e-4)


@pytest.mark.training
def test_a_saved_reranker_loads_as_its_kind_and_a_retrained_kind_leaves_no_stale_weights(tmp_path):
    directory = tmp_path / RERANKER_DIR
    save_reranker(RerankerMLP(len(FEATURE_NAMES), 8), RerankerConfig(hidden=8), directory, {})
    trees = train_reranker(_signal_lists(), TREES, log=lambda m: None)
    save_reranker(trees, TREES, directory, {})
    assert not (directory / RERANKER_WEIGHTS).exists() and (directory / RERANKER_TREES).exists()
    loaded, card = load_reranker(directory)
    probe = _signal_lists(n_lists=2, seed=3)[0].features
    assert isinstance(loaded, RerankerTrees) and card["config"]["kind"] == "lambdamart"
    np.testing.assert_array_equal(loaded(probe), trees(probe))
    (directory / RERANKER_TREES).unlink()
    with pytest.raises(ArtifactError, match="kind 'lambdamart', but reranker_trees.txt is missing"):
        load_reranker(directory)


def test_a_card_written_before_lambdamart_loads_as_the_mlp(tmp_path):
    directory = tmp_path / RERANKER_DIR
    save_reranker(RerankerMLP(len(FEATURE_NAMES), 8), RerankerConfig(hidden=8), directory, {})
    card = json.loads((directory / "reranker.json").read_text())
    del card["config"]["kind"]
    (directory / "reranker.json").write_text(json.dumps(card))
    assert isinstance(load_reranker(directory)[0], RerankerMLP)


def test_an_unknown_reranker_kind_is_a_recipe_error_naming_the_section(tmp_path):
    from shopsearch.train.recipes import Recipe

    with pytest.raises(ConfigError, match=r"\[rerank\].*kind = 'gbdt': expected one of mlp, lambdamart"):
        Recipe(tmp_path / "shop.toml", "synthetic", rerank={"kind": "gbdt"}).reranker_config()


@pytest.mark.training
@pytest.mark.parametrize("cascade_top", [0, 5], ids=["trees alone", "MLP then trees on its top 5"])
def test_a_lambdamart_stage_builds_a_repository_whose_ranker_scores_as_in_process(cascade_top, random_checkpoint, tiny_dataset,
                                                                                 tmp_path):
    """Stage 2 with kind lambdamart on a (random) bi-encoder, then the real build: the served
    ranker's ONNX graphs score the candidates as LightGBM (and PyTorch) do in process, and the
    manifest says what it serves."""
    from shopsearch.build.options import BuildOptions
    from shopsearch.build.search import build_repository
    from shopsearch.serving.pipeline import InProcessEnsemble
    from shopsearch.train.reranker import CheckpointRanker, train_reranker_stage

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(random_checkpoint, checkpoint)
    cfg = RerankerConfig(kind="lambdamart", trees=30, min_data_in_leaf=5, n_dense=10, n_lexical=10, cascade_top=cascade_top,
                         epochs=5)
    train_reranker_stage(checkpoint, tiny_dataset, cfg, log=lambda m: None)
    model, _ = load_reranker(checkpoint / RERANKER_DIR)
    assert isinstance(model, RerankerCascade if cascade_top else RerankerTrees)
    trees = model.second if cascade_top else model
    repo = tmp_path / "model_repository"
    build_repository(checkpoint, tiny_dataset, repo, tmp_path / "work", BuildOptions(precision="fp32", intra_op_threads=1),
                     log=lambda m: None)
    manifest = json.loads((repo / "ranker" / "1" / "manifest.json").read_text())
    assert manifest["reranker_card"]["config"]["kind"] == "lambdamart"
    assert manifest["reranker_export"].get("kind", "mlp") == ("mlp" if cascade_top else "lambdamart")
    assert manifest.get("rescore_top", 0) == cascade_top and ("rescorer_export" in manifest) == bool(cascade_top)
    served = next(step for step in InProcessEnsemble.from_repository(repo, "search").steps if step.name == "ranker").hybrid
    assert served.rescore_top == cascade_top
    ranker = CheckpointRanker.load(checkpoint, tiny_dataset, cfg.n_dense, cfg.n_lexical)
    in_process = install_reranker(ranker.hybrid, model)
    _, texts, vectors, _ = ranker.split_inputs("dev")
    lists = [ranker.hybrid.candidates(t, v) for t, v in zip(texts, vectors)]
    features = np.concatenate([f for _, f in lists])
    assert len(features) > 100 and np.ptp(trees(features)) > 0  # trees that rank, not a constant
    np.testing.assert_allclose((served.rescorer or served.reranker)(features), trees(features), atol=1e-5)
    for (rows, _), got, want in zip(lists, served.score_lists(lists), in_process.score_lists(lists)):
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert list(np.lexsort((rows, -got))) == list(np.lexsort((rows, -want)))


def test_a_cascade_reorders_each_lists_head_by_the_rescorer_and_keeps_the_rest_below_in_order():
    """MLP top k -> trees, with stand-in scorers: the first orders by feature 0, the rescorer by
    feature 1. One call each for the whole batch; the rescorer sees only the heads."""
    from shopsearch.core.hybrid import HybridRanker, LexicalScorer
    from tests.test_hybrid import PRODUCTS, _dense

    calls = []

    def first(f):
        calls.append(("first", len(f)))
        return f[:, 0].copy()

    def rescorer(f):
        calls.append(("rescorer", len(f)))
        return f[:, 1].copy()

    hybrid = HybridRanker(_dense(), LexicalScorer.build(PRODUCTS), first, 3, 3, rescorer, rescore_top=3)
    rng = np.random.default_rng(0)
    lists = [(np.arange(n), rng.standard_normal((n, len(FEATURE_NAMES))).astype(np.float32)) for n in (8, 2, 0, 5)]
    scores = hybrid.score_lists(lists)
    assert calls == [("first", 15), ("rescorer", 3 + 2 + 0 + 3)]
    for (rows, f), s in zip(lists, scores):
        order = list(np.lexsort((rows, -s)))
        head = list(np.argsort(-f[:, 0], kind="stable")[:3])
        assert order[: len(head)] == sorted(head, key=lambda r: -f[r, 1])  # the head, re-ordered by the rescorer
        tail = order[len(head):]
        assert tail == sorted(tail, key=lambda r: -f[r, 0])  # the rest, in the first stage's order, below
        assert all(s[t] < s[h] for t in tail for h in head)
    with pytest.raises(ArtifactError, match="rescore_top"):
        HybridRanker(_dense(), LexicalScorer.build(PRODUCTS), first, 3, 3, rescorer, rescore_top=0)


def test_a_rescore_top_outside_a_hybrid_ranker_is_a_config_error():
    from shopsearch.serving.steps import HYBRID, RankerParams

    with pytest.raises(ConfigError, match="rescore_top"):
        RankerParams("embedding", 10, "e", rescore_top=5)
    with pytest.raises(ConfigError, match="rescore_top"):
        RankerParams("embedding", 10, "e", HYBRID, n_dense=10, n_lexical=10, rescore_top=0)
    assert RankerParams("embedding", 10, "e", HYBRID, n_dense=10, n_lexical=10, rescore_top=30).rescore_top == 30


@pytest.mark.training
def test_a_cascade_saves_both_stages_and_loads_as_a_cascade(tmp_path):
    cfg = RerankerConfig(kind="lambdamart", trees=20, min_data_in_leaf=5, cascade_top=30, epochs=3)
    cascade = train_reranker(_signal_lists(), cfg, log=lambda m: None)
    save_reranker(cascade, cfg, tmp_path, {})
    loaded, _ = load_reranker(tmp_path)
    probe = _signal_lists(n_lists=2, seed=3)[0].features
    assert isinstance(loaded, RerankerCascade) and loaded.top == 30
    np.testing.assert_array_equal(loaded.second(probe), cascade.second(probe))
    (tmp_path / RERANKER_WEIGHTS).unlink()
    with pytest.raises(ArtifactError, match=r"\(cascade_top 30\), but reranker.pt is missing"):
        load_reranker(tmp_path)
    with pytest.raises(ConfigError, match="cascade_top"):
        from shopsearch.train.recipes import Recipe

        Recipe(tmp_path / "shop.toml", "synthetic", rerank={"cascade_top": 30}).reranker_config()

def test_every_search_recipe_names_a_valid_reranker():
    from shopsearch.train.recipes import RECIPE_DIR, load_recipe

    kinds = {path.stem: load_recipe(path).reranker_config().kind
             for path in sorted(RECIPE_DIR.glob("*.toml")) if not path.stem.startswith("rec_")}
    assert kinds["homedepot"] == "lambdamart" and kinds["homedepot_mlp_reranker"] == "mlp"
