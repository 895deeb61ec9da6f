"""The command line with image flows: fit, evaluate and sample on image data in temporary
folders (digits as 1x8x8 images, a folder of the user's PNGs), and its one-line errors."""

import json

import numpy as np
import pytest
from PIL import Image

from pushforward.cli import main
from cli_helpers import invoke

TINY = ["--levels", "1", "--hidden-channels", "4", "--epochs", "1", "--quiet"]


def run(*args, ok=True):
    return invoke(main, *args, ok=ok)


def last_json(result):
    return json.loads(result.output.strip().splitlines()[-1])


def write_images(folder, n=12, size=(4, 4), mode="RGB"):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        shape = (*size[::-1], 3) if mode == "RGB" else size[::-1]
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"img{i:02d}.png")
    return folder


@pytest.mark.parametrize("flow,options", [("glow", ["--steps", "1", "--convolution", "1x1", "--split-prior", "channel"]),
                                          ("realnvp-image", ["--blocks", "1"]),
                                          ("residual-image", ["--blocks", "1"])])
def test_image_flows_fit_evaluate_and_sample_digits_as_images(flow, options, tmp_path):
    out = tmp_path / flow
    metrics = last_json(run("fit", "--data", "digits", "--flow", flow, *TINY, *options, "--out", out, "--json"))
    assert metrics["bits_per_dim"] == pytest.approx(-metrics["log_likelihood_nats"] / (64 * np.log(2)))
    config = json.loads((out / "config.json").read_text())
    assert config["event_shape"] == [1, 8, 8] and config["flow_kwargs"]["pixel_levels"] == 17
    assert (out / "samples.png").is_file()
    again = last_json(run("evaluate", out, "--json"))
    assert again["log_likelihood_nats"] == pytest.approx(metrics["log_likelihood_nats"], rel=1e-5)
    run("sample", out, "-n", 9, "--temperature", "0.7", "-o", tmp_path / "grid.png")
    assert Image.open(tmp_path / "grid.png").size[0] >= 3 * 8
    run("sample", out, "-n", 5, "-o", tmp_path / "s.npy")
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (5, 1, 8, 8) and np.isfinite(samples).all()


def test_glow_on_a_folder_of_rgb_images(tmp_path):
    folder = write_images(tmp_path / "pictures", size=(6, 5))
    out = tmp_path / "run"
    metrics = last_json(run("fit", "--data", folder, "--flow", "glow", *TINY, "--steps", "1", "--image-size", "4",
                            "--out", out, "--json"))
    assert json.loads((out / "config.json").read_text())["event_shape"] == [3, 4, 4]
    assert np.isfinite(metrics["bits_per_dim"]) and metrics["n_examples"] == 2


@pytest.mark.parametrize("args,message", [
    (["--data", "moons", "--flow", "glow"], "holds no images: image flows need images"),
    (["--data", "digits", "--flow", "glow", "--levels", "4"], "divisible by 16"),
    (["--data", "digits", "--flow", "maf", "--steps", "3"], "--steps does not apply to --flow maf"),
    (["--data", "digits", "--flow", "glow", "--image-size", "3"], "image_size"),
])
def test_image_options_and_data_mismatches_are_one_line_errors(args, message, tmp_path):
    result = run("fit", *args, "--epochs", "1", "--quiet", "--out", tmp_path / "run", ok=False)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code != 0 and len(errors) == 1 and message in errors[0], result.output


def test_a_vector_flow_on_a_folder_of_images_is_a_one_line_error(tmp_path):
    folder = write_images(tmp_path / "pictures")
    result = run("fit", "--data", folder, "--flow", "maf", "--epochs", "1", "--out", tmp_path / "run", ok=False)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "vector flow and needs rows" in errors[0]
    assert not (tmp_path / "run" / "model.pt").exists()


def test_a_folder_of_mixed_sizes_is_a_one_line_error(tmp_path):
    folder = write_images(tmp_path / "mixed", mode="L")
    Image.fromarray(np.zeros((5, 5), np.uint8), "L").save(folder / "odd.png")
    result = run("fit", "--data", folder, "--flow", "glow", *TINY, "--out", tmp_path / "run", ok=False)
    assert result.exit_code == 1 and "different sizes" in result.output
    assert len(result.output.strip().splitlines()) == 1
