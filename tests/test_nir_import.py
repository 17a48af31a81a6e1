"""NIR in: graphs written by snnTorch, SpikingJelly, Sinabs and Norse's own exporters become students
that compute what the library computes; our own NIR files come back as the identical student; what
cannot map is refused in one line that names the node, with nothing written."""

from __future__ import annotations

import importlib.util
import warnings
from copy import deepcopy
from pathlib import Path

import foreign_nets as fn
import nir
import numpy as np
import pytest
import torch
from helpers import make_student, run_cli
from lasnn_deploy.exporters import RunResult, get_target

from lasnn_deploy import export, import_nir, load_student
from lasnn_deploy.data import first_samples, load_split
from lasnn_deploy.errors import UserError
from lasnn_deploy.inputs import model_input
from lasnn_deploy.neurons import poisson_inputs
from lasnn_deploy.nir_read import CONVENTIONS, student_from_any_nir
from lasnn_deploy.student import Dropout, SpikingStudent
from lasnn_deploy.validation import compare, validate

T = 6
warnings.filterwarnings("ignore", category=DeprecationWarning)


def needs(library: str):
    module = {"snntorch": "snntorch", "spikingjelly": "spikingjelly", "sinabs": "sinabs", "norse": "norse"}[library]
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None,
        reason=f"{library} is not installed (extra `{library}`; CI installs it)",
    )


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return first_samples(load_split("digits", None, "test"), 16)[0]


def imported(library: str, f: fn.Foreign, tmp_path: Path, capsys, encoding: str = "direct") -> SpikingStudent:
    """The foreign graph through a file and the CLI; Norse's (``nir.write`` cannot store it) through the API."""
    run = tmp_path / "run"
    if library == "norse":
        import_nir(f.graph, run, library=library, timesteps=T, encoding=encoding, input_shape=fn.SHAPE)
    else:
        raw = student_from_any_nir(f.graph, library=library, timesteps=T, encoding=encoding, input_shape=fn.SHAPE)
        fn.write(f.graph, tmp_path / "net.nir")  # Sinabs' graph gets nir's infer_types() first
        code, out, err = run_cli(
            capsys,
            "import",
            tmp_path / "net.nir",
            "--from",
            library,
            "--out",
            run,
            "--timesteps",
            T,
            "--encoding",
            encoding,
            "--input-shape",
            "1,16,16",
        )
        assert code == 0, err
        through_file = load_student(run)
        assert all(
            torch.equal(a, b)
            for a, b in zip(raw.state_dict().values(), through_file.state_dict().values(), strict=True)
        )
        return through_file
    return load_student(run)


def names(student: SpikingStudent) -> list[str]:
    """The LIF layers' names every runtime reports (the layer each LIF follows)."""
    return [student.config.layer_name(i) for i in student.config.spiking_layers]


def traced(student: SpikingStudent, images=None, input_spikes=None) -> RunResult:
    with torch.no_grad():
        trace = student.run(images, input_spikes=input_spikes, record=True)
    return RunResult(trace.logits.numpy(), [s.numpy() for s in trace.spikes], names(student))


def assert_same(foreign: RunResult, got: RunResult) -> None:
    """Spikes and classes identical to the library's; ``foreign`` takes ``got``'s layer names."""
    foreign = RunResult(foreign.logits, foreign.spikes, list(got.layer_names))
    report = compare(foreign, got)
    assert report["output_agreement"] == 1.0 and report["spike_agreement"] == 1.0, report
    assert report["max_abs_logit_error"] < 1e-5
    assert all(0 < np.mean(s) < 0.9 for s in foreign.spikes), "every layer fires, and not always"


@pytest.mark.parametrize("kind", ["conv", "dense"])
@pytest.mark.parametrize("library", [pytest.param(lib, marks=needs(lib)) for lib in fn.LIBRARIES])
def test_foreign_export_imports_as_a_student_that_computes_what_the_library_does(
    library, kind, images, tmp_path, capsys
):
    """The library's own simulation is the reference: the student and its ONNX export match it spike for spike."""
    f = fn.build(library, kind)
    steps = images.unsqueeze(0).expand(T, *images.shape)
    logits, spikes = fn.simulate(library, f, steps)
    foreign = RunResult(logits, spikes)
    student = imported(library, f, tmp_path, capsys)
    assert_same(foreign, traced(student, images))
    onnx_file = export(student, "onnx", tmp_path / "run" / "student.onnx")
    assert_same(foreign, get_target("onnx").run(onnx_file, model_input(student.config.encoding, T, images)))


@needs("snntorch")
def test_lava_export_of_an_imported_snntorch_net_equals_snntorch(images, tmp_path, capsys):
    """Loihi-representable weights, leak 0.5, Poisson spikes: netx in Lava = snnTorch, spike for spike."""
    f = fn.build("snntorch", "int")
    spikes_in = poisson_inputs(images, T, seed=0)
    foreign = RunResult(*fn.simulate("snntorch", f, spikes_in))
    student = imported("snntorch", f, tmp_path, capsys, encoding="poisson")
    lava_file = export(student, "lava", tmp_path / "run" / "student.h5")
    assert_same(foreign, get_target("lava").run(lava_file, model_input("poisson", T, input_spikes=spikes_in)))
    report = validate(student, lava_file, images)  # and `validate` takes the imported run as it is
    assert report["passed"]


@needs("snntorch")
def test_biases_come_in_as_student_biases(images, tmp_path, capsys):
    """snnTorch writes a Linear with a bias as Affine and a Conv2d's bias on the node: both become ``bias``."""
    f = fn.build("snntorch", "conv")
    torch.manual_seed(3)
    biased = torch.nn.Sequential(*[deepcopy(m) for m in f.net])
    for k in (0, 4):
        old = biased[k]
        new = type(old)(*((1, 4, 3) if k == 0 else (256, 10)), **({"padding": 1} if k == 0 else {}), bias=True)
        with torch.no_grad():
            new.weight.copy_(old.weight)
            new.bias.uniform_(-0.1, 0.1)
        biased[k] = new
    from snntorch.export_nir import export_to_nir

    g = fn.Foreign(biased, export_to_nir(biased, torch.rand(1, *fn.SHAPE), ignore_dims=[0]), [biased[1]])
    student = imported("snntorch", g, tmp_path, capsys)
    assert student.config.layers[0].bias and student.config.layers[-1].bias
    steps = images.unsqueeze(0).expand(T, *images.shape)
    assert_same(RunResult(*fn.simulate("snntorch", g, steps)), traced(student, images))


@needs("spikingjelly")
@needs("snntorch")
def test_cubalif_with_an_instant_synapse_is_a_lif_and_one_with_memory_is_refused(images):
    """SpikingJelly's CUBALIFNode with c_decay = 0 (tau_syn = dt) computes a LIF, spike for spike; snnTorch's
    Synaptic with alpha = 0.5 keeps half its current from step to step, which a student cannot."""
    import snntorch as snn
    from snntorch.export_nir import export_to_nir
    from spikingjelly.activation_based import layer, neuron
    from spikingjelly.activation_based.nir_exchange import export_to_nir as sj_export

    cuba = neuron.CUBALIFNode(c_decay=0.0, v_decay=0.9, v_threshold=0.5, v_reset=0.0)
    body = torch.nn.Sequential(
        layer.Flatten(), layer.Linear(256, 32, bias=False), cuba, layer.Linear(32, 10, bias=False)
    )
    fn._init(body, 0, 1.0)
    instant = fn.Foreign(body, sj_export(body, torch.rand(1, *fn.SHAPE)), [cuba])
    assert any(isinstance(n, nir.CubaLIF) for n in instant.graph.nodes.values())
    student = student_from_any_nir(instant.graph, library="spikingjelly", timesteps=T)
    steps = images.unsqueeze(0).expand(T, *images.shape)
    assert_same(RunResult(*fn.simulate("spikingjelly", instant, steps)), traced(student, images))

    _norse_cubalif_matches_norse(images)

    syn = snn.Synaptic(
        alpha=torch.full((32,), 0.5),
        beta=torch.full((32,), 0.9),
        threshold=torch.full((32,), 0.5),
        init_hidden=True,
        reset_mechanism="zero",
    )
    body = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(256, 32, bias=False), syn, torch.nn.Linear(32, 10, bias=False)
    )
    with pytest.raises(UserError, match=r"NIR node '2': CubaLIF synapse tau_syn"):
        student_from_any_nir(export_to_nir(body, torch.rand(1, *fn.SHAPE), ignore_dims=[0]), library="snntorch")


def _norse_cubalif_matches_norse(images) -> None:
    """Norse's LIFCell with tau_syn_inv = 1/dt (its current forgets every step), exported as CubaLIF."""
    if importlib.util.find_spec("norse") is None:
        return
    import norse.torch as norse
    from norse.torch.utils.export_nir import to_nir

    cell = norse.LIFCell(
        norse.LIFParameters(tau_syn_inv=torch.tensor(1000.0), tau_mem_inv=torch.tensor(200.0), v_th=torch.tensor(0.2))
    )
    body = norse.SequentialState(torch.nn.Linear(256, 32), cell, torch.nn.Linear(32, 10))
    fn._init(body, 1, 1.0)
    f = fn.Foreign(body, to_nir(body, torch.rand(1, 256)), [cell])
    assert any(isinstance(n, nir.CubaLIF) for n in f.graph.nodes.values())
    student = student_from_any_nir(f.graph, library="norse", timesteps=T, input_shape=fn.SHAPE)
    steps = images.unsqueeze(0).expand(T, *images.shape)
    assert_same(RunResult(*fn.simulate("norse", f, steps)), traced(student, images))


def test_our_own_nir_file_comes_back_as_the_identical_student(tmp_path, capsys):
    source = make_student(leak=0.87, seed=4)
    layers = tuple(l for l in source.config.layers if not isinstance(l, Dropout))
    student = SpikingStudent(
        source.config.replace(layers=layers), leak=source.leak.item(), thresholds=source.thresholds.detach().tolist()
    )
    weights = [m.weight for m in source.weighted_modules()]
    with torch.no_grad():
        for m, w in zip(student.weighted_modules(), weights, strict=True):
            m.weight.copy_(w)
    path = export(student, "nir", tmp_path / "student.nir")
    code, _, err = run_cli(capsys, "import", path, "--out", tmp_path / "run")  # no --from: the file says its dt
    assert code == 0, err
    back = load_student(tmp_path / "run")
    assert back.config == student.config
    state, state_back = student.state_dict(), back.state_dict()
    assert state.keys() == state_back.keys() and all(torch.equal(state[k], state_back[k]) for k in state)


# -- refusals --------------------------------------------------------------------------------
def _graph(library: str = "snntorch", kind: str = "dense") -> nir.NIRGraph:
    return fn.build(library, kind).graph


@needs("snntorch")
def test_heterogeneous_leaks_are_refused_naming_the_node():
    g = _graph()
    g.nodes["4"] = nir.LIF(
        tau=g.nodes["4"].tau * 2,
        r=g.nodes["4"].r * 2,
        v_leak=g.nodes["4"].v_leak,
        v_threshold=g.nodes["4"].v_threshold,
        v_reset=g.nodes["4"].v_reset,
    )
    with pytest.raises(UserError, match=r"NIR node '4': leak 0.95 differs from '2'"):
        student_from_any_nir(g, library="snntorch")


@needs("snntorch")
def test_recurrence_is_refused_naming_the_node():
    g = _graph()
    g.edges.append(("2", "1"))  # the LIF's spikes back into its own synapse
    with pytest.raises(UserError, match=r"NIR node '1': 2 incoming edges .*recurrence"):
        student_from_any_nir(g, library="snntorch")


@needs("snntorch")
def test_reset_to_another_value_and_per_neuron_thresholds_are_refused():
    g = _graph()
    g.nodes["2"].v_reset = np.full_like(g.nodes["2"].v_reset, 0.1)
    with pytest.raises(UserError, match=r"NIR node '2': v_reset = 0.1"):
        student_from_any_nir(g, library="snntorch")
    g = _graph()
    g.nodes["2"].v_threshold = np.linspace(0.1, 1, g.nodes["2"].v_threshold.size).astype(np.float32)
    with pytest.raises(UserError, match=r"NIR node '2': v_threshold differs across neurons"):
        student_from_any_nir(g, library="snntorch")


@needs("snntorch")
def test_a_flatten_of_part_of_the_map_is_refused():
    g = _graph("snntorch", "conv")
    g.nodes["3"].start_dim = 1  # [C, H*W]: not a student's flatten
    with pytest.raises(UserError, match=r"NIR node '3': Flatten\(start_dim=1, end_dim=-1\) does not flatten the whole"):
        student_from_any_nir(g, library="snntorch")


@needs("snntorch")
def test_conventions_give_each_library_its_dt():
    dts = {k: c.dt for k, c in CONVENTIONS.items()}
    assert dts == {"lasnn-deploy": 1e-4, "snntorch": 1e-4, "spikingjelly": 1e-4, "norse": 1e-3, "sinabs": 1.0}
    lam = float(student_from_any_nir(_graph(), library="snntorch").leak)
    assert lam == np.float32(0.9)
    assert float(student_from_any_nir(_graph(), dt=5e-5).leak) == np.float32(0.95)  # the same file read at another dt


@pytest.fixture
def files(tmp_path) -> Path:
    """A folder of NIR files: a real snnTorch export, one with an unsupported node, a truncated copy."""
    pytest.importorskip("snntorch")
    g = _graph()
    fn.write(g, tmp_path / "ok.nir")
    g.nodes["2"] = nir.Threshold(threshold=np.full(32, 0.5, dtype=np.float32))
    fn.write(g, tmp_path / "threshold.nir")
    data = (tmp_path / "ok.nir").read_bytes()
    (tmp_path / "truncated.nir").write_bytes(data[: len(data) // 2])
    return tmp_path


@pytest.mark.parametrize(
    "argv,fragment",
    [
        ("{f}/threshold.nir --from snntorch", "NIR node '2': node type Threshold has no student equivalent"),
        (
            "{f}/ok.nir --dt 0.001",
            "NIR node '2': dt = 0.001 against tau = 0.001 gives leak -3.01749e-07, outside (0, 1]",
        ),
        ("{f}/ok.nir --dt 0.01", "gives leak -9, outside (0, 1]: a wrong dt"),
        ("{f}/ok.nir", "does not say its time step (metadata key 'dt')"),
        ("{f}/truncated.nir --from snntorch", "is not a readable NIR file"),
        ("{f}/missing.nir --from snntorch", "no NIR file at"),
    ],
)
def test_bad_nir_input_is_one_line_exit_2_and_nothing_written(files, argv, fragment, capsys):
    before = sorted(p.name for p in files.iterdir())
    code, out, err = run_cli(capsys, "import", *argv.format(f=files).split(), "--out", files / "run")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("lasnn-deploy import: error:"), err
    assert fragment in lines[0], lines[0]
    assert sorted(p.name for p in files.iterdir()) == before, "a refused import wrote something"


def test_a_nir_file_is_accepted_where_a_model_is(tmp_path, capsys):
    """``export`` takes our own NIR file as the model; a foreign one without a dt names the import command."""
    student = make_student(seed=2)
    path = export(student, "nir", tmp_path / "student.nir")
    code, out, err = run_cli(capsys, "export", path, "--target", "onnx", "--out", tmp_path / "student.onnx")
    assert code == 0 and (tmp_path / "student.onnx").is_file(), err
    if importlib.util.find_spec("snntorch") is not None:
        fn.write(_graph(), tmp_path / "foreign.nir")
        code, _, err = run_cli(
            capsys, "export", tmp_path / "foreign.nir", "--target", "onnx", "--out", tmp_path / "f.onnx"
        )
        assert code == 2 and "lasnn-deploy import" in err and not (tmp_path / "f.onnx").exists()
        g = _graph()
        g.metadata = {"dt": 1e-4}  # a foreign file that says its dt is read as plain NIR at that dt
        fn.write(g, tmp_path / "with_dt.nir")
        assert (
            load_student(tmp_path / "with_dt.nir").state_dict().keys()
            == student_from_any_nir(g, library="snntorch").state_dict().keys()
        )
        assert float(load_student(tmp_path / "with_dt.nir").leak) == np.float32(0.9)


@needs("norse")
def test_a_leak_potential_becomes_a_bias(images):
    """Norse writes ``v_leak``: its drive ``(dt/tau) v_leak`` per step is the preceding Linear's bias.

    Norse starts a membrane at ``v_leak``, NIR says nothing and a student starts at 0: the run below
    starts Norse at 0 too (from its own default start, the first steps differ)."""
    import norse.torch as norse
    from norse.torch.functional.lif_box import LIFBoxFeedForwardState
    from norse.torch.utils.export_nir import to_nir

    cell = norse.LIFBoxCell(
        norse.LIFBoxParameters(tau_mem_inv=torch.tensor(200.0), v_th=torch.tensor(0.2), v_leak=torch.tensor(0.3))
    )
    body = norse.SequentialState(torch.nn.Linear(256, 32), cell, torch.nn.Linear(32, 10))
    fn._init(body, 2, 0.5)
    f = fn.Foreign(body, to_nir(body, torch.rand(1, 256)), [cell])
    student = student_from_any_nir(f.graph, library="norse", timesteps=T, input_shape=fn.SHAPE)
    assert student.config.layers[1].bias and torch.allclose(student.body[1].bias, torch.full((32,), 0.2 * 0.3))
    spikes, outputs = [], []
    state = [None, LIFBoxFeedForwardState(v=torch.zeros(len(images), 32)), None]
    with torch.no_grad():
        for _ in range(T):
            x = body[0](images.flatten(1))
            z, state[1] = cell(x, state[1])
            spikes.append(z)
            outputs.append(body[2](z))
    foreign = RunResult(torch.stack(outputs).mean(0).numpy(), [torch.stack(spikes).numpy()])
    assert_same(foreign, traced(student, images))


@needs("snntorch")
def test_a_recurrent_layer_is_refused_naming_it():
    """snnTorch exports ``RLeaky`` as a subgraph (LIF with a recurrent weight): no feed-forward student has it."""
    import snntorch as snn
    from snntorch.export_nir import export_to_nir

    body = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(256, 32, bias=False),
        snn.RLeaky(beta=0.9, linear_features=32, init_hidden=True, reset_mechanism="zero"),
        torch.nn.Linear(32, 10, bias=False),
    )
    graph = export_to_nir(body, torch.rand(1, *fn.SHAPE), ignore_dims=[0])
    with pytest.raises(UserError, match=r"NIR node '2.lif': 2 incoming edges .*recurrence"):
        student_from_any_nir(graph, library="snntorch")
