"""`dogbreeds bench` on generated photos: every stage measured, the JSON complete."""

import json

from dogbreeds.bench import BenchResult, Stage

from helpers import dogbreeds

STAGES = {
    "legacy_loader",
    "tfdata_loader",
    "tfdata_strong",
    "tfdata_cached",
    "decode",
    "decode_resize",
    "forward",
    "submit",
    "fit_in_memory",
    "fit_from_files",
    "fit_accumulated",
}


def test_bench_measures_every_stage_on_generated_photos(tmp_path):
    result = dogbreeds(
        "bench",
        *("--backbone", "tiny_cnn", "--image-size", 48, "--batch-size", 8),
        *("--images", 24, "--model-images", 16, "--accumulate", 2, "--json"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)  # nothing but the JSON on standard output
    assert set(figures) == {"settings", "machine", "stages", "rates", "ratios"}
    settings = figures["settings"]
    assert settings["data"] == "24 generated 500x375 JPEGs"
    assert (settings["image_size"], settings["backbone"], settings["images"], settings["model_images"]) == (
        48,
        "tiny_cnn",
        24,
        16,
    )
    assert settings["tta"] is True and settings["augmentation"]["rotation"] == 15.0 and settings["accumulate"] == 2
    for key in ("device", "cpus", "precision", "tensorflow", "keras", "load_average_before", "load_average_after"):
        assert figures["machine"][key] is not None, key
    assert {stage["name"] for stage in figures["stages"]} == set(figures["rates"]) == STAGES
    for stage in figures["stages"]:
        assert stage["images"] > 0 and stage["seconds"] > 0 and stage["images_per_second"] > 0, stage
    peaks = {stage["name"]: stage["peak_megabytes"] for stage in figures["stages"]}
    assert peaks["fit_in_memory"] > 0 and peaks["fit_accumulated"] >= 0  # batch 8, then 2 x 4 an update
    assert peaks["forward"] is None  # measured for the training steps only
    assert set(figures["ratios"]) == {
        "tfdata_vs_legacy",
        "strong_vs_legacy",
        "tfdata_vs_decode_resize",
        "submit_vs_forward",
        "epoch_vs_steps",
    }
    for ratio in figures["ratios"].values():
        assert set(ratio) == {"ratio", "target", "what", "met"} and ratio["ratio"] > 0
        assert isinstance(ratio["met"], bool)
    assert not list(tmp_path.iterdir())  # the generated photos went with their temporary folder


def test_a_ratio_is_met_at_its_target_and_not_below_it():
    """The default loader must be 4x the legacy one: 512 images in 1 s against 4 s meets it, in 3 s does not."""

    def result(legacy_seconds):
        stages = [Stage("legacy_loader", "", 512, legacy_seconds), Stage("tfdata_loader", "", 512, 1.0)]
        return BenchResult({}, {}, stages)

    met, missed = result(4.0).ratios()["tfdata_vs_legacy"], result(3.0).ratios()["tfdata_vs_legacy"]
    assert (met["ratio"], met["met"]) == (4.0, True)
    assert (missed["ratio"], missed["met"]) == (3.0, False)
    assert set(result(3.0).ratios()) == {"tfdata_vs_legacy"}  # only ratios whose two stages ran
