"""MEAL: teachers frozen and out of checkpoints, tap shapes and alignment, the direction of each adversarial mode,
learning on toy problems, config errors, and a run through the engine that records its teachers."""
import json
from pathlib import Path

import pytest
import selfens_plugins.meal
import torch
from safetensors import safe_open
from selfens_plugins.meal.discriminator import grad_reverse
from selfens_plugins.meal.distiller import STUDENT, TEACHER, MealDistiller, _bce
from selfens_plugins.meal.taps import align
from selfens_plugins.meal.teachers import TeacherEnsemble

import selfens_core
from selfens_core import engine
from selfens_core.config import ConfigError, load_config
from selfens_core.data import load_dataset
from selfens_core.plugins import registries
from selfens_core.pretrained import save_pretrained

DATA = "fake:1:16:16:10"


@pytest.fixture(scope="module")
def facts() -> dict:
    """What the engine writes into a model's pretrained_cfg for the data it trains on."""
    info, _ = load_dataset(DATA)
    return dict(mean=info.mean, std=info.std, input_size=info.input_size, class_names=list(info.class_names),
                dataset=info.name)


def _model(name: str, facts: dict, **args) -> selfens_core.SelfEnsemble:
    model = selfens_core.create(name, num_classes=10, in_chans=1, **args)
    model.pretrained_cfg.update(facts)
    return model


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, facts) -> dict[str, str]:
    """Untrained tiny teachers saved as run directories, by short name → ``local-dir:`` reference."""
    root = tmp_path_factory.mktemp("teachers")
    refs = {}
    for short, name, args in (("resnet", "deep-ensemble-resnet10t", {"num_members": 1}),
                              ("mobilenet", "deep-ensemble-mobilenetv2_050", {"num_members": 1}),
                              ("tree", "hne-resnet-small", {"num_members": 2})):
        save_pretrained(_model(name, facts, **args), root / short)
        refs[short] = f"local-dir:{root / short}"
    return refs


def _attached(facts, refs, student="deep-ensemble-mobilenetv2_050", members=1, **args):
    model = _model(student, facts, num_members=members)
    distiller = MealDistiller(refs, **args)
    distiller.attach(model)
    return model, distiller


def _batch(n=8):
    return torch.randn(n, 1, 16, 16), torch.randint(10, (n,))


# ----------------------------------------------------------------------------------------------- the teachers


def test_teachers_are_frozen_in_eval_mode_and_out_of_the_state_dict(facts, teachers):
    model, distiller = _attached(facts, [teachers["resnet"], teachers["mobilenet"]], selection="average")
    frozen = [t.model for t in distiller.teachers]
    before = [{k: v.clone() for k, v in t.state_dict().items()} for t in frozen]
    params = list(model.parameters()) + list(distiller.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1)
    model.train()
    distiller.train()
    for _ in range(2):
        x, y = _batch()
        optimizer.zero_grad()
        sum(distiller(model(x), y, inputs=x, model=model).values()).backward()
        optimizer.step()
    for teacher, state in zip(frozen, before):
        assert not teacher.training and all(not m.training for m in teacher.modules())
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
        assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in state.items())  # BN stats untouched too
    teacher_ids = {id(p) for t in frozen for p in t.parameters()}
    assert not teacher_ids & {id(p) for p in distiller.parameters()}
    assert all(k.startswith(("discriminators.", "discriminator_accuracy")) for k in distiller.state_dict())
    distiller.double()  # .to() / dtype moves reach the teachers although they are not children
    assert all(p.dtype == torch.float64 for t in frozen for p in t.parameters())


def test_teachers_that_do_not_fit_the_students_data_are_refused(facts, teachers, tmp_path):
    other = _model("deep-ensemble-mobilenetv2_050", {**facts, "mean": (0.1,), "std": (0.2,)}, num_members=1)
    save_pretrained(other, tmp_path / "other")
    with pytest.raises(ValueError, match=r"teacher 'local-dir:.*other' expects inputs normalised with mean=.*"):
        _attached(facts, [teachers["resnet"], f"local-dir:{tmp_path / 'other'}"])
    wide = selfens_core.create("deep-ensemble-mobilenetv2_050", num_classes=7, in_chans=1, num_members=1)
    save_pretrained(wide, tmp_path / "wide")
    with pytest.raises(ValueError, match=r"teacher 'local-dir:.*wide' has num_classes=7, but the student's data has "
                                         r"10"):
        _attached(facts, [f"local-dir:{tmp_path / 'wide'}"])
    with pytest.raises(ValueError, match=r"teacher 'local-dir:/nonexistent' could not be loaded"):
        _attached(facts, ["local-dir:/nonexistent"])


# ----------------------------------------------------------------------------------------------- taps


@pytest.mark.parametrize("pair", ["mobilenet-student", "two-resnet-members"])
def test_tap_shapes_and_alignment_for_two_student_teacher_pairs(facts, teachers, pair):
    if pair == "mobilenet-student":  # default taps: the deepest stages with >= 4x4 outputs at 16x16: r2 and r4
        model, distiller = _attached(facts, [teachers["resnet"]])
        members, reductions, dims = 1, [2, 4], [64, 16]
        student_shapes = [(8, 8, 8), (16, 4, 4)]
        teacher_shapes = [(64, 8, 8), (64, 4, 4)]
    else:  # a two-member resnet10t student taught by a MobileNetV2, chosen stages, pooled shorter, max pooling
        model, distiller = _attached(facts, [teachers["mobilenet"]], student="deep-ensemble-resnet10t", members=2,
                                     reductions=[4, 8], dims=[8, 2], pool="max")
        members, reductions, dims = 2, [4, 8], [8, 2]
        student_shapes = [(64, 4, 4), (128, 2, 2)]
        teacher_shapes = [(16, 4, 4), (16, 2, 2)]
    assert distiller.reductions == reductions and distiller.dims == dims
    assert distiller.tap_names == [f"r{r}" for r in reductions] + ["logits"]
    assert [d.dim for d in distiller.discriminators] == [*dims, 10]
    x, _ = _batch(4)
    outputs = model(x)
    captured = dict(distiller._student_taps.captured)
    assert sorted(captured) == [(n, j) for n in range(members) for j in range(2)]
    assert [tuple(captured[(0, j)].shape) for j in range(2)] == [(4, *s) for s in student_shapes]
    student = distiller.student_representations(outputs)
    assert [tuple(r.shape) for r in student] == [(members, 4, d) for d in [*dims, 10]]
    assert not distiller._student_taps.captured  # handed over, not kept
    teacher_model = distiller.teachers[0]
    teacher_model.model(x)
    assert [tuple(teacher_model.taps.captured[(0, j)].shape) for j in range(2)] == [(4, *s) for s in teacher_shapes]
    teacher_model.taps.take()
    teacher = distiller.teacher_representations(x)
    assert [tuple(r.shape) for r in teacher] == [(4, d) for d in [*dims, 10]]
    for rep in [*student, *teacher]:  # log-distributions over the aligned positions / classes
        assert torch.allclose(rep.exp().sum(-1), torch.ones(()), atol=1e-5)
    with torch.no_grad():  # evaluation passes are not captured
        model(x)
    assert not distiller._student_taps.captured


def test_alignment_pools_positions_then_channels():
    feature = torch.arange(2 * 2 * 4, dtype=torch.float32).reshape(1, 2, 2, 4)  # positions 0..7, channel 1 is +8
    assert torch.equal(align(feature, 8), torch.arange(8.0)[None] + 4)  # same length: the channel mean per position
    assert torch.equal(align(feature, 2), torch.tensor([[5.5, 9.5]]))  # mean of 4 positions, then of 2 channels
    assert torch.equal(align(feature, 2, "max"), torch.tensor([[11.0, 15.0]]))
    assert align(torch.randn(3, 5, 7, 7), 16).shape == (3, 16)


def test_tap_errors_name_the_model_and_what_it_offers(facts, teachers):
    with pytest.raises(ValueError, match=r"teacher 'local-dir:.*tree' \(hne-resnet-small\) has no stage for tap\(s\) "
                                         r"r2, r4; it offers only its logits"):
        _attached(facts, [teachers["resnet"], teachers["tree"]])
    with pytest.raises(ValueError, match=r"the student hne-resnet-small offers only its logits"):
        _attached(facts, [teachers["resnet"]], student="hne-resnet-small", members=2)
    with pytest.raises(ValueError, match=r"no stage at reduction\(s\) \[3\]; it offers r2 \(8x8\), r4 \(4x4\), r8"):
        _attached(facts, [teachers["resnet"]], reductions=[3, 4])
    with pytest.raises(ValueError, match=r"needs 4 student stage\(s\) with at least 16 output positions"):
        _attached(facts, [teachers["resnet"]], taps=5)
    # A stacked-tree teacher teaches through its logits: taps 1, or missing_taps: skip.
    model, distiller = _attached(facts, [teachers["tree"]], student="hne-resnet-small", members=2, taps=1)
    x, y = _batch(4)
    terms = distiller(model(x), y, inputs=x, model=model)
    assert set(terms) == {"sim.logits", "disc", "adv"}
    model, distiller = _attached(facts, [teachers["tree"]], missing_taps="skip")
    terms = distiller(model(x), y, inputs=x, model=model)
    assert terms["sim.r2"] == 0 and terms["sim.logits"] > 0


@pytest.mark.parametrize("args, message", [
    (dict(teachers=[]), "non-empty list"), (dict(selection="best"), "selection is 'best'; allowed: random, average"),
    (dict(taps=4), "no default weights for taps=4"), (dict(weights=[1.0]), "one value per tap"),
    (dict(reductions=[8]), "reductions must list 2"), (dict(adversarial="gan"), "allowed: alternating, grl"),
])
def test_bad_arguments_are_errors(args, message):
    with pytest.raises(ValueError, match=message):
        MealDistiller(**{"teachers": ["x"], **args})


# ----------------------------------------------------------------------------------------------- adversarial


def _toy(mode: str, dims=(6, 4)):
    """Discriminators on synthetic tap distributions: the student's are trainable logits, the teacher's fixed."""
    distiller = MealDistiller(["unused"], taps=len(dims), weights=[1.0] * len(dims), adversarial=mode)
    distiller.discriminators = torch.nn.ModuleList(selfens_plugins.meal.discriminator.Discriminator(d) for d in dims)
    distiller.register_buffer("discriminator_accuracy", torch.full((len(dims),), float("nan")))
    student = [torch.nn.Parameter(torch.randn(1, 32, d)) for d in dims]
    teacher = [torch.log_softmax(3 * torch.randn(32, d), -1) for d in dims]
    return distiller, student, teacher


def _disc_loss_on(distiller, student_logits, teacher):
    """Each discriminator's own loss, and its loss on the student's samples alone."""
    total, on_student = [], []
    with torch.no_grad():
        for z, t, d in zip(student_logits, teacher, distiller.discriminators):
            s = torch.log_softmax(z, -1).flatten(0, 1)
            on_student.append(_bce(d(s), STUDENT))
            total.append(0.5 * (on_student[-1] + _bce(d(t), TEACHER)))
    return torch.stack(total), torch.stack(on_student)


@pytest.mark.parametrize("mode", ["alternating", "grl", "joint"])
def test_each_discriminator_gets_a_gradient_and_each_side_moves_the_right_way(mode):
    distiller, student, teacher = _toy(mode)
    reps = [torch.log_softmax(z, -1) for z in student]
    terms = distiller.adversarial_terms(reps, teacher)
    assert set(terms) == ({"disc", "adv"} if mode == "alternating" else {"disc"})
    sum(terms.values()).backward()
    for d in distiller.discriminators:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.parameters())
    before, before_on_student = _disc_loss_on(distiller, student, teacher)
    with torch.no_grad():
        stepped = [z - 0.5 * z.grad for z in student]
        for p in distiller.discriminators.parameters():
            p -= 0.05 * p.grad
    after, _ = _disc_loss_on(distiller, student, teacher)
    assert (after < before).all()  # a step of the discriminators alone: every one of them gets better
    with torch.no_grad():
        for p in distiller.discriminators.parameters():
            p += 0.05 * p.grad
    _, moved_on_student = _disc_loss_on(distiller, stepped, teacher)
    if mode == "joint":  # the original code's sign: the student helps the discriminators
        assert (moved_on_student < before_on_student).all()
    else:  # adversarial: a step of the student alone makes every discriminator worse on its samples
        assert (moved_on_student > before_on_student).all()


def test_alternating_gives_the_discriminators_no_gradient_from_the_students_loss():
    distiller, student, teacher = _toy("alternating")
    terms = distiller.adversarial_terms([torch.log_softmax(z, -1) for z in student], teacher)
    terms["adv"].backward()
    assert all(p.grad is None for p in distiller.discriminators.parameters())
    assert all(z.grad is not None for z in student)
    x = torch.randn(3, requires_grad=True)
    grad_reverse(x, 0.5).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -0.5))


def _accuracy(distiller, student, teacher) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([0.5 * ((d(s.flatten(0, 1)).argmax(-1) == STUDENT).float().mean()
                                   + (d(t).argmax(-1) == TEACHER).float().mean())
                            for s, t, d in zip(student, teacher, distiller.discriminators)])


def _train_discriminators(distiller, student, teacher, steps: int) -> list[float]:
    optimizer = torch.optim.Adam(distiller.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = distiller.adversarial_terms(student, teacher)["disc"]
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_discriminator_accuracy_rises_while_training_only_the_discriminators():
    distiller, _, _ = _toy("alternating", dims=(16, 10))
    pattern = [torch.randn(d) for d in (16, 10)]  # the teacher's distributions sit elsewhere than the student's
    teacher = [torch.log_softmax(p + 0.3 * torch.randn(64, p.numel()), -1) for p in pattern]
    student = [torch.log_softmax(torch.randn(1, 64, p.numel()), -1) for p in pattern]
    start = _accuracy(distiller, student, teacher)
    _train_discriminators(distiller, student, teacher, 100)
    end = _accuracy(distiller, student, teacher)
    assert (end > 0.95).all() and (end > start).all(), (start, end)


def test_discriminators_learn_on_real_taps(facts, teachers):
    model, distiller = _attached(facts, [teachers["resnet"]])
    x, _ = _batch(32)
    student = [r.detach() for r in distiller.student_representations(model(x))]
    teacher = distiller.teacher_representations(x)
    start = _accuracy(distiller, student, teacher)
    losses = _train_discriminators(distiller, student, teacher, 60)
    end = _accuracy(distiller, student, teacher)
    assert losses[-1] < 0.85 * losses[0] and end.mean() > start.mean() and end[-1] > 0.9, (losses, start, end)
    assert set(distiller.describe()["discriminator_accuracy"]) == {"r2", "r4", "logits"}


def test_student_similarity_improves_while_training_only_the_student(facts, teachers):
    model, distiller = _attached(facts, [teachers["mobilenet"]], student="deep-ensemble-resnet10t")
    x, y = _batch(8)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)  # the student's parameters only

    def similarity():
        terms = distiller(model(x), y, inputs=x, model=model)
        return terms, torch.stack([v for k, v in terms.items() if k.startswith("sim.")])

    _, start = similarity()
    for _ in range(8):
        optimizer.zero_grad()
        terms, _ = similarity()
        sum(terms.values()).backward()
        optimizer.step()
    _, end = similarity()
    assert end.sum() < start.sum() and end[-1] < start[-1], (start, end)  # the logits tap carries the weight


@pytest.mark.parametrize("loss", ["ce", "l1", "l2"])
def test_similarity_losses(loss):
    distiller = MealDistiller(["unused"], loss=loss)
    teacher = torch.log_softmax(torch.randn(4, 6), -1)
    student = torch.nn.Parameter(torch.randn(2, 4, 6))  # two members
    p, q = torch.softmax(student, -1), teacher.exp()
    expected = {"ce": -(q * torch.log_softmax(student, -1)).sum(-1), "l1": (p - q).abs().sum(-1),
                "l2": (p - q).square().sum(-1)}[loss].mean(-1).sum()
    value = distiller.similarity(torch.log_softmax(student, -1), teacher)
    assert torch.allclose(value, expected)
    optimizer = torch.optim.SGD([student], lr=1.0)
    for _ in range(20):
        optimizer.zero_grad()
        distiller.similarity(torch.log_softmax(student, -1), teacher).backward()
        optimizer.step()
    assert distiller.similarity(torch.log_softmax(student, -1), teacher) < value


def test_average_selection_averages_the_teachers_probabilities(facts, teachers):
    _, distiller = _attached(facts, [teachers["resnet"], teachers["mobilenet"]], selection="average")
    x, _ = _batch(4)
    with torch.no_grad():
        single = [distiller._run_teacher(t, x) for t in distiller.teachers]
    averaged = distiller.teacher_representations(x)
    for j in range(3):
        assert torch.allclose(averaged[j].exp(), (single[0][j] + single[1][j]) / 2, atol=1e-6)


# ----------------------------------------------------------------------------------------------- end to end


def test_engine_run_records_its_teachers_and_resumes_with_the_discriminators(tmp_path, teachers, register_plugin):
    register_plugin(selfens_plugins.meal, "meal")  # a no-op when the package's entry point is installed
    overrides = ["model.name=deep-ensemble-mobilenetv2_050", "model.args.num_members=1", f"data.name={DATA}",
                 "data.subset=48", "train.batch_size=16", "train.epochs=1", "data.eval_batch_size=100",
                 "distiller.name=meal", f"distiller.args.teachers=['{teachers['resnet']}','{teachers['mobilenet']}']",
                 "distiller.args.discriminator_lr=0.01"]
    run = tmp_path / "run"
    engine.train(load_config(None, overrides), run, progress=False)
    with safe_open(run / "checkpoints" / "epoch-0001" / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("distiller.discriminators.") for k in keys)
    assert all(k.startswith(("model.", "distiller.discriminator")) for k in keys)  # no teacher weights
    assert "distiller.discriminator_accuracy" in keys  # the report survives a resume
    recorded = json.loads((run / "metrics.json").read_text())["distiller"]
    assert [t["ref"] for t in recorded["teachers"]] == [teachers["resnet"], teachers["mobilenet"]]
    assert recorded["teachers"][0]["architecture"] == "deep-ensemble-resnet10t"
    assert len(recorded["teachers"][0]["weights_sha256"]) == 64 and recorded["taps"] == ["r2", "r4", "logits"]
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert set(line["loss"]) == {"sim.r2", "sim.r4", "sim.logits", "disc", "adv"}
    metrics = engine.train(load_config(None, [*overrides, "train.epochs=2"]), run, resume=True, progress=False,
                           allow_changes=["train.epochs"])  # extends the run: recorded, not silent
    assert metrics["distiller"]["teachers"][1]["local_dir"] == teachers["mobilenet"].removeprefix("local-dir:")
    bad = [*overrides, f"distiller.args.teachers=['{teachers['tree']}']"]
    with pytest.raises(ConfigError, match=r"distiller \(name 'meal'\): teacher .*tree.* has no stage"):
        engine.train(load_config(None, bad), tmp_path / "bad", progress=False)
    assert "meal" in registries().distillers.names()


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("meal*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_configs_build_with_stand_in_teachers(path, teachers, register_plugin):
    register_plugin(selfens_plugins.meal, "meal")
    cfg = load_config(path, [f"data.name={DATA}", "data.subset=128"])
    stand_ins = [teachers["resnet"], teachers["mobilenet"], teachers["tree"]][:len(cfg.distiller.args.teachers)]
    if cfg.distiller.args.get("taps", 3) > 1 and cfg.distiller.args.get("missing_taps") != "skip":
        stand_ins = [t for t in stand_ins if t != teachers["tree"]]
    setup = engine.build(load_config(path, [f"data.name={DATA}", "data.subset=128",
                                            f"distiller.args.teachers=[{','.join(stand_ins)}]"]))
    assert setup.model.num_members == 1 and setup.distiller.teachers
    assert setup.distiller.reductions == list(cfg.distiller.args.get("reductions") or [])


def test_teacher_ensemble_averages_probabilities_and_counts_every_teachers_flops(teachers):
    from selfens_core.metrics import count_flops

    ensemble = TeacherEnsemble.load([teachers["resnet"], teachers["tree"]])
    x, _ = _batch(4)
    with torch.no_grad():
        expected = (ensemble.teachers[0].predict(x) + ensemble.teachers[1].predict(x)) / 2
        assert torch.allclose(ensemble.predict(x), expected, atol=1e-5)
    one, both = (count_flops(ensemble, x[:1], members=k) for k in (1, 2))
    assert one == count_flops(ensemble.teachers[0], x[:1]) and both > one
