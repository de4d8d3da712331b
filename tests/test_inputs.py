"""What a model does with bad inputs: NaN/inf images, bad sizes and member counts, empty batches, wrong dtypes, and
a broken config.json. Each case gives a clear error (or a documented warning / empty result), never a silent NaN."""
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import selfens_core
from selfens_core import SelfEnsemble, engine
from selfens_core.checkpoint import CheckpointError
from selfens_core.cli import main
from selfens_core.data import DatasetInfo, Split
from selfens_core.ensemble import NonFiniteInputError, NonFiniteInputWarning
from selfens_core.evaluation import evaluate
from selfens_core.factory import build_component
from selfens_core.pretrained import load_pretrained, save_pretrained
from selfens_core.registry import UnknownNameError


class Tiny(SelfEnsemble):
    """Three heads on a shared conv + BatchNorm trunk."""

    def __init__(self, num_classes: int = 4, in_chans: int = 1, num_members: int = 3):
        super().__init__(num_members=num_members, num_classes=num_classes, in_chans=in_chans, input_size=(8, 8),
                         min_input_size=4)
        self.trunk = nn.Sequential(nn.Conv2d(in_chans, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(4, num_classes) for _ in range(num_members))

    def forward_members(self, x, members):
        features = self.trunk(x).mean((2, 3))
        return torch.stack([head(features) for head in self.heads[:members]])


def _images(batch=4):
    return torch.randn(batch, 1, 8, 8)


# ---------------------------------------------------------------- NaN and inf


def test_a_non_finite_training_batch_is_refused_before_any_module_runs():
    model = Tiny().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = _images()
    x[1, 0, 2, 2], x[3, 0, 0, 0], x[3, 0, 1, 1] = float("nan"), float("inf"), float("nan")
    with pytest.raises(NonFiniteInputError, match=r"^2 of 4 images contain non-finite values \(3 NaN/inf values; "
                                                  r"batch positions 1, 3\): refused in training mode"):
        model(x)
    with torch.no_grad(), pytest.raises(NonFiniteInputError):  # BatchNorm updates its statistics under no_grad too
        model(x, members=1)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats and num_batches_tracked untouched
    assert isinstance(NonFiniteInputError("x"), ValueError)  # the CLI turns it into a one-line message


def test_the_message_reaching_the_user_names_the_training_batch(monkeypatch, tmp_path):
    iterate = engine.iterate_batches

    def one_nan_in_the_first_batch(*args, **kwargs):
        for step, (x, y) in enumerate(iterate(*args, **kwargs)):
            if kwargs.get("train") and step == 0:
                x[5, 0, 3, 3] = float("nan")
            yield x, y

    monkeypatch.setattr(engine, "iterate_batches", one_nan_in_the_first_batch)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "configs/hne-resnet-small-fmnist.yaml", "--out", str(tmp_path / "run"), "--quiet",
              "data.name=digits", "data.subset=16", "train.batch_size=8", "train.epochs=1",
              "model.args.num_members=2"])
    assert str(exit_info.value.code).startswith(
        "error: training batch at epoch 1, step 1: 1 of 8 images contain non-finite values (1 NaN/inf values; "
        "batch positions 5)")


def test_non_finite_images_in_evaluation_mode_warn_and_leave_the_others_alone():
    model = Tiny().eval()
    x = _images(3)
    x[1, 0, 4, 4] = float("nan")
    with pytest.warns(NonFiniteInputWarning, match=r"^1 of 3 images contain non-finite values \(1 NaN/inf values; "
                                                   r"batch positions 1\): their logits and probabilities are NaN") as w:
        out = model(x)
    assert w[0].filename == __file__  # points at the caller's line, not into torch
    with pytest.warns(NonFiniteInputWarning):
        probs = model.predict(x)
    assert torch.isnan(out[:, 1]).all() and torch.isnan(probs[1]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # finite images: no warning
        torch.testing.assert_close(out[:, [0, 2]], model(x[[0, 2]]))
        torch.testing.assert_close(probs[[0, 2]], model.predict(x[[0, 2]]))


def _split(n=4):
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8)
    return Split(images, torch.arange(n) % 4)


def _info(std=(0.5,)):
    return DatasetInfo("tiny", 4, 1, (1, 8, 8), (0.5,), std, tuple("abcd"))


def test_evaluate_refuses_non_finite_images_and_logits_instead_of_scoring_them():
    model = Tiny()
    with pytest.raises(ValueError, match=r"^evaluate: 2 image\(s\) are non-finite after normalisation with mean "
                                         r"\(0.5,\) and std \(0.0,\) \(split indices 0, 1: the first batch holding "
                                         r"any\): fix the data or the normalisation .*; no metrics were computed"):
        evaluate(model, _split(5), _info(std=(0.0,)), batch_size=2, flops=False)
    with torch.no_grad():
        model.heads[0].weight[0, 0] = float("nan")  # a diverged model: finite images, NaN logits
    with pytest.raises(ValueError, match=r"^evaluate: 3 image\(s\) got non-finite logits although they are finite "
                                         r"\(split indices 0, 1, 2: .*\): the model's weights are probably NaN"):
        evaluate(model, _split(4), _info(), batch_size=3, flops=False)
    with pytest.raises(ValueError, match="^evaluate: the split holds 0 images"):
        evaluate(Tiny(), _split(0), _info(), flops=False)


# ---------------------------------------------------------------- sizes and member counts


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(num_classes=0), "num_classes must be an int >= 1, got 0"),
    (dict(num_classes=-1), "num_classes must be an int >= 1, got -1"),
    (dict(num_classes=True), "num_classes must be an int >= 1, got True"),
    (dict(num_classes=2.5), "num_classes must be an int >= 1, got 2.5"),
    (dict(num_classes=10, in_chans=0), "in_chans must be an int >= 1, got 0"),
    (dict(num_classes=10, num_members=True), "num_members must be an int >= 1, got True"),
    (dict(num_classes=10, num_members=2.0), "num_members must be an int >= 1, got 2.0"),
])
def test_bad_class_and_channel_counts_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        selfens_core.create("hne-resnet18", **kwargs)  # timm would build a head-less network for num_classes=0
    with pytest.raises(ValueError, match=f"^{message}$"):  # a model built by hand is checked too
        Tiny(**{"in_chans": 1, **kwargs})


def test_num_members_none_leaves_the_count_to_the_builder():
    model = selfens_core.create("ienet-resnet10t", num_classes=3, in_chans=1, num_members=None, widths=[0.5, 1.0])
    assert model.num_members == 2  # IENet takes its count from widths


def test_bad_member_counts_are_refused():
    with pytest.raises(ValueError, match=r"^num_members must be an int >= 1, got 0$"):
        Tiny(num_members=0)
    model = Tiny().eval()
    x = _images(2)
    for members in (True, False, 0, -1, 4, 1.0, "1", object()):
        hint = r" \(a bool is not a member count\)" if isinstance(members, bool) else ""
        with pytest.raises(ValueError, match=rf"^members must be an int in \[1, 3\], .*got .*{hint}$"):
            model(x, members=members)
    for members in ([], [True], [0, 0], [3], [-1], [0.0]):
        with pytest.raises(ValueError, match=r"^member indices must be distinct ints in \[0, 2\]"):
            model(x, members=members)
    with pytest.raises(ValueError, match="got True"):
        model.predict(x, members=True)
    assert model(x, members=np.int64(2)).shape == (2, 2, 4)  # int-likes are fine
    assert model(x, members=torch.tensor(1)).shape == (1, 2, 4)
    assert model(x, members=(np.int64(2), 0)).shape == (2, 2, 4)


# ---------------------------------------------------------------- empty batches


@pytest.mark.parametrize("combiner", ["mean_logits", "mean_probs", "voting", "stacking", "weighted"])
def test_an_empty_batch_gives_empty_outputs_in_evaluation_mode(combiner):
    model = Tiny().eval()
    model.combiner = build_component("combiners", combiner)
    empty = _images(0)
    assert model(empty).shape == (3, 0, 4) and model(empty, members=2).shape == (2, 0, 4)
    assert model(empty, members=(2, 0)).shape == (2, 0, 4)
    assert model(empty).dtype == torch.float32
    assert model.predict(empty).shape == (0, 4) and model.predict(empty, members=1).shape == (0, 4)


def test_an_empty_batch_is_refused_in_training_mode():
    with pytest.raises(ValueError, match="^a training batch of 0 images: nothing to train on"):
        Tiny().train()(_images(0))


def test_hne_empty_batch_rounds_members_like_a_full_one():
    model = selfens_core.create("hne-resnet-small", num_classes=3, in_chans=1, num_members=4).eval()
    with pytest.warns(UserWarning, match="members=3 is not a power of two"):
        assert model(torch.zeros(0, 1, 28, 28), members=3).shape == (4, 0, 3)


# ---------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_integer_images_are_refused_with_how_to_convert_them(dtype):
    with pytest.raises(TypeError, match=rf"^expected floating-point images \(torch.float32, the model's parameter "
                                        rf"dtype\), got {dtype}; convert 8-bit images with x.float\(\) / 255, then "
                                        rf"normalise them with model.pretrained_cfg\['mean'\] and \['std'\]"):
        Tiny().eval()(torch.zeros(2, 1, 8, 8, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_are_refused_outside_autocast(dtype):
    autocast = r", run the model under torch.autocast\('cpu'" if dtype != torch.float64 else ""
    with pytest.raises(TypeError, match=rf"^the model's parameters are torch.float32 but the images are {dtype}; "
                                        rf"pass x.to\(torch.float32\){autocast}"):
        Tiny().eval()(_images(2).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autocast_training_takes_full_and_lower_precision_images(dtype):
    """The engine's bf16 training runs fp32 images under torch.autocast; bf16 images work there too."""
    model = Tiny().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(_images(2).to(dtype))
    assert out.dtype == torch.bfloat16 and out.shape == (3, 2, 4)
    out.float().logsumexp(-1).mean().backward()
    assert model.trunk[0].weight.grad is not None
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.predict(_images(2).to(dtype)).shape == (2, 4)
        assert model(_images(0).to(dtype)).dtype == torch.bfloat16


def test_a_half_precision_model_takes_its_own_dtype():
    model = Tiny().eval().to(torch.bfloat16)
    assert model(_images(2).bfloat16()).dtype == torch.bfloat16
    with pytest.raises(TypeError, match="parameters are torch.bfloat16 but the images are torch.float32"):
        model(_images(2))


# ---------------------------------------------------------------- config.json


@pytest.fixture
def saved(tmp_path):
    model = selfens_core.create("hne-resnet-small", num_classes=3, in_chans=1, num_members=2)
    return save_pretrained(model, tmp_path / "model")


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", r"config.json is not valid JSON \(Expecting property name .*\); expected an object with "
                  r"'architecture' \(the registered model name"),
    (b"\xff\xfe\x00", r"config.json is not valid JSON \('utf-8' codec"),
    ("[1, 2]", r"config.json holds a JSON list, not an object; expected"),
    ('{"num_classes": 3, "in_chans": 1}', r"config.json lacks 'architecture'; expected an object with 'architecture'"),
    ("{}", r"config.json lacks 'architecture', 'num_classes', 'in_chans'; expected"),
    ('{"architecture": 3, "num_classes": "3", "in_chans": 1}',
     r"config.json: 'architecture' is int 3, not str; 'num_classes' is str '3', not int; expected"),
    ('{"architecture": "hne-resnet-small", "num_classes": 3, "in_chans": 1, "build_args": [2]}',
     r"config.json: 'build_args' is list, not an object"),
])
def test_a_broken_config_json_is_named_with_what_is_expected(saved, content, message):
    config = saved / "config.json"
    config.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=f"^{config}".replace("\\", "\\\\") + message.removeprefix("config.json")):
        load_pretrained(saved)


def test_a_config_json_the_builder_refuses_names_the_file(saved):
    config = saved / "config.json"
    cfg = json.loads(config.read_text())
    cfg["build_args"]["num_member"] = 2
    config.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=rf"^{config}: cannot build 'hne-resnet-small' from it: model "
                                         rf"'hne-resnet-small' got unknown argument\(s\) num_member"):
        load_pretrained(saved)
    cfg["build_args"], cfg["num_classes"] = {}, 0
    config.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"cannot build 'hne-resnet-small' from it: num_classes must be an int >= 1"):
        load_pretrained(saved)
    cfg["num_classes"], cfg["architecture"] = 3, "hne-resnet-smal"
    config.write_text(json.dumps(cfg))
    with pytest.raises(UnknownNameError, match=rf"^{config}: Unknown model 'hne-resnet-smal'. Did you mean"):
        load_pretrained(saved)


def test_weights_of_another_model_name_the_config_that_does_not_fit(saved):
    save_pretrained(selfens_core.create("hne-resnet-small", num_classes=3, in_chans=1, num_members=4),
                    saved.parent / "other")
    (saved / "model.safetensors").write_bytes((saved.parent / "other" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"(?s)shape mismatches: .*, \.\.\. and \d+ more \(\d+ in all\).*"
                                              r"config.json builds 'hne-resnet-small' with build_args "
                                              r"\{'num_members': 2\}: the weights were saved from another model"):
        load_pretrained(saved)
    with pytest.raises(FileNotFoundError, match="absent does not exist"):
        load_pretrained(saved.parent / "absent")
    with pytest.raises(FileNotFoundError, match="config.json is a file: give the folder that holds it"):
        load_pretrained(saved / "config.json")
