"""The command line of the latent space and of variational dequantization: interpolate and
manipulate on a Glow trained for seconds on digits as images, fit --dequantization variational,
and their one-line errors."""

import json

import numpy as np
import pytest
from PIL import Image

from pushforward.cli import main
from cli_helpers import invoke

TINY = ["--data", "digits", "--flow", "glow", "--levels", "1", "--steps", "1", "--hidden-channels", "8",
        "--epochs", "1", "--batch-size", "256", "--quiet"]


def run(*args, ok=True):
    return invoke(main, *args, ok=ok)


@pytest.fixture(scope="module")
def glow_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("latent") / "glow"
    run("fit", *TINY, "--out", out)
    return out


@pytest.fixture(scope="module")
def variational_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("latent") / "variational"
    result = run("fit", *TINY, "--dequantization", "variational", "--out", out, "--json")
    return out, json.loads(result.output.strip().splitlines()[-1])


def png(path):
    image = np.asarray(Image.open(path).convert("L"))
    assert image.ndim == 2
    return image


def test_interpolate_writes_a_strip_with_the_originals_at_its_ends(glow_run, tmp_path):
    run("interpolate", glow_run, "--a", 0, "--b", 1, "--steps", 6, "-o", tmp_path / "strip.png")
    strip = png(tmp_path / "strip.png")
    # 8 images of 8 x 8 pixels a row, one pixel apart, each enlarged by the same factor
    zoom = strip.shape[0] // 9
    assert strip.shape == (9 * zoom, 8 * 9 * zoom)
    cells = [strip[:8 * zoom, k * 9 * zoom:(k * 9 + 8) * zoom] for k in range(8)]
    # the originals and the decoded ends of the path agree up to the rounding of the PNG
    assert np.abs(cells[0].astype(int) - cells[1]).max() <= 16
    assert np.abs(cells[7].astype(int) - cells[6]).max() <= 16
    assert np.abs(cells[0].astype(int) - cells[7]).max() > 64
    run("interpolate", glow_run, "--a", 2, "--b", 3, "--slerp", "-o", tmp_path / "slerp.png")
    slerp = png(tmp_path / "slerp.png")
    assert slerp.shape[1] == 10 * slerp.shape[0]  # 8 steps (the default) and the two originals


def test_interpolate_reads_image_files(glow_run, tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(tmp_path / name)
    run("interpolate", glow_run, "--a", tmp_path / "a.png", "--b", tmp_path / "b.png", "--steps", 2,
        "-o", tmp_path / "strip.png")
    assert (tmp_path / "strip.png").is_file()


def test_manipulate_writes_a_row_per_source_and_a_column_per_alpha(glow_run, tmp_path):
    run("manipulate", glow_run, "--source", 0, "--source", 5, "--positive", 3, "--negative", "1,7",
        "--alphas", "-1,0,1", "--examples", 50, "-o", tmp_path / "grid.png")
    grid = png(tmp_path / "grid.png")
    zoom = grid.shape[1] // 27
    assert grid.shape == (2 * 9 * zoom, 3 * 9 * zoom)


def test_manipulate_with_folders_of_images(glow_run, tmp_path):
    rng = np.random.default_rng(1)
    for folder, level in (("bright", 200), ("dark", 30)):
        (tmp_path / folder).mkdir()
        for i in range(3):
            pixels = np.clip(rng.normal(level, 10, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "L").save(tmp_path / folder / f"{i}.png")
    run("manipulate", glow_run, "--source", 0, "--positive", tmp_path / "bright", "--negative", tmp_path / "dark",
        "-o", tmp_path / "grid.png")
    assert (tmp_path / "grid.png").is_file()


def test_bad_input_is_a_one_line_error(glow_run, tmp_path):
    Image.fromarray(np.zeros((10, 10), np.uint8), "L").save(tmp_path / "big.png")
    out = tmp_path / "x.png"
    cases = [
        (("interpolate", glow_run, "--a", 0, "--b", 181, "-o", out), "--b 181: index out of range"),
        (("interpolate", glow_run, "--a", -1, "--b", 0, "-o", out), "--a -1: index out of range"),
        (("interpolate", glow_run, "--a", tmp_path / "big.png", "--b", 0, "-o", out), "is 1x10x10"),
        (("interpolate", glow_run, "--a", tmp_path / "none.png", "--b", 0, "-o", out), "no such image file"),
        (("interpolate", glow_run, "--a", 0, "--b", 1, "--steps", 1, "-o", out), "below 2"),
        (("interpolate", glow_run, "--a", 0, "--b", 1, "-o", tmp_path / "x.npy"), "give a .png file"),
        (("manipulate", glow_run, "--source", 0, "--positive", 12, "--negative", 1, "-o", out),
         "--positive 12: no train examples of class 12"),
        (("manipulate", glow_run, "--source", 0, "--positive", 3, "--negative", "x", "-o", out),
         "neither a folder of images nor class labels"),
        (("manipulate", glow_run, "--source", 0, "--positive", 3, "--negative", 1, "--alphas", ",", "-o", out),
         "finite numbers"),
    ]
    (tmp_path / "empty").mkdir()
    cases.append((("manipulate", glow_run, "--source", 0, "--positive", tmp_path / "empty", "--negative", 1,
                   "-o", out), "no image files"))
    for args, message in cases:
        result = run(*args, ok=False)
        assert result.exit_code != 0 and message in result.output, (args, result.output)
        assert result.output.strip().splitlines()[-1].startswith("Error:")
    assert not out.exists()


def test_a_vector_flow_is_refused(tmp_path):
    run("fit", "--data", "digits", "--flow", "maf", "--transforms", 1, "--hidden-features", 8, "--epochs", 1,
        "--quiet", "--out", tmp_path / "maf")
    for command in (("interpolate", "--a", 0, "--b", 1), ("manipulate", "--source", 0, "--positive", 1,
                                                         "--negative", 2)):
        result = run(command[0], tmp_path / "maf", *command[1:], "-o", tmp_path / "x.png", ok=False)
        assert "holds a vector flow (maf)" in result.output and result.exit_code == 1


def test_fit_with_variational_dequantization_reports_the_bound_and_the_importance_weighted_estimate(
        variational_run, tmp_path):
    out, fitted = variational_run
    assert json.loads((out / "config.json").read_text())["dequantization"] == "variational"
    assert fitted["dequantization"] == "variational" and fitted["iw_samples"] is None  # evaluate's job
    metrics = json.loads(run("evaluate", out, "--json").output)
    assert metrics["iw_samples"] == 16
    # the K-sample estimate is the better bound (on average, and over 181 test digits surely)
    assert metrics["iw_bits_per_dim"] < metrics["bits_per_dim"]
    assert metrics["iw_bits_per_dim"] == pytest.approx(-metrics["iw_log_likelihood_nats"] / (64 * np.log(2)))
    again = run("evaluate", out)
    assert "dequantization ELBO" in again.output and "importance-weighted (variational q, K=16)" in again.output
    assert "importance-weighted (variational q, K=2)" in run("evaluate", out, "--iw-samples", 2).output
    run("sample", out, "-n", 4, "-o", tmp_path / "s.png")
    run("interpolate", out, "--a", 0, "--b", 1, "--steps", 3, "-o", tmp_path / "strip.png")


def test_evaluate_gives_the_importance_weighted_estimate_of_a_uniformly_dequantized_run(glow_run):
    plain = json.loads(run("evaluate", glow_run, "--json").output)
    assert plain["iw_bits_per_dim"] is None
    metrics = json.loads(run("evaluate", glow_run, "--json", "--iw-samples", 8).output)
    assert metrics["dequantization"] == "uniform" and metrics["iw_samples"] == 8
    assert metrics["bits_per_dim"] == plain["bits_per_dim"] and metrics["iw_bits_per_dim"] < metrics["bits_per_dim"]
    result = run("evaluate", glow_run, "--iw-samples", 0, ok=False)
    assert "Invalid value for '--iw-samples'" in result.output


def test_dequantization_option_errors(tmp_path):
    result = run("fit", "--data", "digits", "--flow", "maf", "--dequantization", "variational",
                 "--out", tmp_path / "m", ok=False)
    assert "applies to image flows" in result.output and not (tmp_path / "m").exists()
    result = run("fit", *TINY, "--dequantization", "learned", "--out", tmp_path / "g", ok=False)
    assert "'learned' is not one of" in result.output


def test_a_bad_dequantization_in_config_json_is_named(glow_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(glow_run, copy)
    config = json.loads((copy / "config.json").read_text())
    config["dequantization"] = "gaussian"
    (copy / "config.json").write_text(json.dumps(config))
    result = run("evaluate", copy, ok=False)
    assert "config.json is corrupted: dequantization" in result.output
