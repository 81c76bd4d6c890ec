"""Publishing: kernel repo, generated modeling file, offline loads from a real HF cache layout."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import build, qwen3_config
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import hf_sparse_attn as hsa
from hf_sparse_attn import SparseAttentionConfig, attach_indexer, load_indexer, save_indexer
from hf_sparse_attn.hub.bundle import MODELING_FILE, render_modeling_file
from hf_sparse_attn.hub.kernel_repo import build_kernel_repo
from hf_sparse_attn.hub.publish import render_repo

ROOT = Path(__file__).resolve().parents[1]
SPARSE = SparseAttentionConfig(block_size=16, top_k=3, min_sparse_len=16)


def OFFLINE(cache: Path) -> dict:
    return {"cache_dir": cache, "local_files_only": True}


def cache_repo(cache: Path, repo_id: str, folder: Path, commit: str, branch: str | None = "main") -> None:
    """Place ``folder`` in the documented HF cache layout (blobs, snapshots/<commit>, refs/<branch>)."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    (root / "blobs").mkdir(exist_ok=True)
    for path in folder.iterdir():
        blob = root / "blobs" / f"{commit[:8]}-{path.name}"
        shutil.copy(path, blob)
        os.symlink(os.path.relpath(blob, snap), snap / path.name)
    if branch:
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / branch).write_text(commit)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {f"w{i}": i for i in range(128)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="w1", pad_token="w0", unk_token="w0")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A cache holding a tiny base repo, an indexer-only repo on top of it, and a full repo."""
    tmp = tmp_path_factory.mktemp("hub")
    cache = tmp / "cache"
    base = build(qwen3_config())
    base.save_pretrained(tmp / "base")
    tiny_tokenizer().save_pretrained(tmp / "base")
    cache_repo(cache, "test-org/tiny-base", tmp / "base", "b" * 40)
    model = attach_indexer(build(qwen3_config()), SPARSE)
    torch.manual_seed(1)
    for indexer in hsa.indexers(model).values():
        indexer.q_proj.weight.data.normal_()
    save_indexer(model, tmp / "indexer")
    render_repo(
        tmp / "sparse",
        tmp / "indexer",
        "test-org/tiny-base",
        "b" * 40,
        results_dir=ROOT / "results" / "kernels",
        **OFFLINE(cache),
    )
    cache_repo(cache, "test-org/tiny-sparse", tmp / "sparse", "c" * 40)
    render_repo(tmp / "full", tmp / "indexer", "test-org/tiny-base", model_dir=tmp / "base")
    cache_repo(cache, "test-org/tiny-full", tmp / "full", "d" * 40)
    cache_repo(cache, "test-org/tiny-full", tmp / "full", "e" * 40, branch=None)
    return {"tmp": tmp, "cache": cache, "model": model}


def run_offline(hub, code: str, block_package: bool = True) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(hub["cache"]),
        "HF_MODULES_CACHE": str(hub["tmp"] / "modules"),
        "TRANSFORMERS_VERBOSITY": "error",
    }
    prelude = "import sys\nsys.modules['hf_sparse_attn'] = None\n" if block_package else ""
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=hub["tmp"],
    )


def _reference_logits(hub, ids):
    with torch.no_grad():
        return hub["model"](ids).logits


LOAD = """
import json, torch
from transformers import AutoModelForCausalLM
try:
    import hf_sparse_attn
    raise SystemExit("hf_sparse_attn should not be importable here")
except ImportError:
    pass
model = AutoModelForCausalLM.from_pretrained({repo!r}, trust_remote_code=True, attn_implementation="sparse_prefill"{extra})
ids = torch.arange(400).remainder(128)[None]  # long enough that top_k=3 keeps < 50%: sparse on CPU
with torch.no_grad():
    logits = model(ids).logits
sel = [m.self_attn.indexer.last_selection.kv_num_blocks.sum().item() for m in model.model.layers]
print(json.dumps({{"cls": type(model).__name__, "logits": logits[0, -3:].tolist(), "selected": sel}}))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "repo,extra",
    [("test-org/tiny-sparse", ""), ("test-org/tiny-full", ""), ("test-org/tiny-full", ", revision='e' * 40")],
)
def test_offline_load_without_hf_sparse_attn(hub, repo, extra):
    proc = run_offline(hub, LOAD.format(repo=repo, extra=extra))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cls"] == "SparseQwen3ForCausalLM" and all(n > 0 for n in out["selected"])
    ref = _reference_logits(hub, torch.arange(400).remainder(128)[None])[0, -3:]
    torch.testing.assert_close(torch.tensor(out["logits"]), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_pipeline_on_loaded_repo(hub):
    proc = run_offline(
        hub,
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
        model = AutoModelForCausalLM.from_pretrained("test-org/tiny-sparse", trust_remote_code=True,
                                                     attn_implementation="sparse_prefill")
        tok = AutoTokenizer.from_pretrained("test-org/tiny-sparse")
        pipe = pipeline("text-generation", model=model, tokenizer=tok)
        out = pipe(" ".join(f"w{i % 100 + 2}" for i in range(60)), max_new_tokens=5, do_sample=False)
        print(len(out[0]["generated_text"].split()))
    """,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.strip().splitlines()[-1]) >= 60


@pytest.mark.slow  # a subprocess load
def test_missing_base_model_is_a_clear_error(hub):
    tmp = hub["tmp"]
    render_repo(tmp / "orphan", tmp / "indexer", "test-org/tiny-base", "b" * 40, **OFFLINE(hub["cache"]))
    config = json.loads((tmp / "orphan" / "config.json").read_text())
    config["base_model"] = {"id": "test-org/not-downloaded", "revision": "main"}
    (tmp / "orphan" / "config.json").write_text(json.dumps(config))
    cache_repo(hub["cache"], "test-org/orphan", tmp / "orphan", "f" * 40)
    proc = run_offline(hub, LOAD.format(repo="test-org/orphan", extra=""))
    assert proc.returncode != 0 and "base model test-org/not-downloaded" in proc.stderr


@pytest.mark.slow  # a subprocess load
def test_indexer_that_does_not_fit_the_base_is_rejected(hub, tmp_path):
    other = attach_indexer(build(qwen3_config(num_heads=4, num_kv_heads=2, layers=3)), SPARSE)
    save_indexer(other, tmp_path / "idx")
    render_repo(tmp_path / "bad", tmp_path / "idx", "test-org/tiny-base", "b" * 40, **OFFLINE(hub["cache"]))
    cache_repo(hub["cache"], "test-org/bad-fit", tmp_path / "bad", "1" * 40)
    proc = run_offline(hub, LOAD.format(repo="test-org/bad-fit", extra=""))
    assert proc.returncode != 0 and "does not fit this model" in proc.stderr


@pytest.mark.slow  # a subprocess load
def test_newer_config_version_is_rejected(hub, tmp_path):
    shutil.copytree(hub["tmp"] / "sparse", tmp_path / "newer")
    config = json.loads((tmp_path / "newer" / "config.json").read_text())
    config["sparse_attention"]["format_version"] = 99
    (tmp_path / "newer" / "config.json").write_text(json.dumps(config))
    cache_repo(hub["cache"], "test-org/newer", tmp_path / "newer", "2" * 40)
    proc = run_offline(hub, LOAD.format(repo="test-org/newer", extra=""))
    assert proc.returncode != 0 and "newer than this hf-sparse-attn understands" in proc.stderr


@pytest.mark.slow  # a subprocess load
def test_sparse_prefill_on_a_repo_without_indexer_names_the_untrained_selector(hub):
    proc = run_offline(
        hub,
        """
        import hf_sparse_attn, torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained("test-org/tiny-base", attn_implementation="sparse_prefill")
        model(torch.zeros(1, 8, dtype=torch.long))
    """,
        block_package=False,
    )
    assert proc.returncode != 0 and "has no indexer" in proc.stderr and "selector='patterns'" in proc.stderr


def test_rendered_repo_files_and_card(hub):
    sparse = hub["tmp"] / "sparse"
    names = {p.name for p in sparse.iterdir()}
    assert {"config.json", "indexer.safetensors", "sparse_config.json", MODELING_FILE, "README.md"} <= names
    assert not any(n.startswith("model") and n.endswith(".safetensors") for n in names)
    config = json.loads((sparse / "config.json").read_text())
    assert config["base_model"] == {"id": "test-org/tiny-base", "revision": "b" * 40}
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_sparse_prefill.SparseQwen3ForCausalLM"
    card = (sparse / "README.md").read_text()
    assert card.startswith("---\nbase_model: test-org/tiny-base\nlibrary_name: transformers\n")
    assert "| qwen3-8b | 128K |" in card and "$" not in card.split("---")[2][:50]


def test_rendered_tokenizer_config_drops_the_options_of_an_offline_load(hub, tmp_path):
    model_dir = tmp_path / "trained"
    shutil.copytree(hub["tmp"] / "base", model_dir)
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(config | {"is_local": True, "local_files_only": True}))
    render_repo(tmp_path / "out", hub["tmp"] / "indexer", "test-org/tiny-base", model_dir=model_dir)
    rendered = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert rendered == config  # everything else kept
    assert json.loads((tmp_path / "out" / "config.json").read_text())["_name_or_path"] == "test-org/tiny-base"
    bundled = json.loads((ROOT / "hf_sparse_attn/assets/proxy-qwen3/tokenizer_config.json").read_text())
    assert not {"is_local", "local_files_only"} & set(bundled)
    bundled = json.loads((ROOT / "hf_sparse_attn/assets/proxy-qwen3/config.json").read_text())
    assert bundled["_name_or_path"] == "proxy-qwen3"


def test_bundle_takes_the_whole_runtime_folder_without_shadowing():
    from hf_sparse_attn.hub.bundle import RUNTIME_DIR, bundled_modules

    runtime = {f"runtime/{p.name}" for p in RUNTIME_DIR.glob("*.py") if p.name != "__init__.py"}
    assert runtime <= set(bundled_modules())
    source = render_modeling_file()  # refuses a name defined twice
    assert "noqa: F811" not in source and source.rstrip().endswith("ops = HubKernelOps()")


def test_kernel_repo_loads_with_get_local_kernel_and_local_kernels(tmp_path, monkeypatch):
    kernels = pytest.importorskip("kernels")
    repo = build_kernel_repo(tmp_path / "kr")
    meta = json.loads((repo / "build" / "torch-universal" / "metadata.json").read_text())
    assert meta["name"] == "sparse-prefill-kernels" and meta["version"] == 1
    mod = kernels.get_local_kernel(repo, backend="cpu")
    from hf_sparse_attn.ops.block_sparse_attn.naive import block_sparse_attention

    q, k, v = torch.randn(1, 4, 40, 16), torch.randn(1, 2, 40, 16), torch.randn(1, 2, 40, 16)
    num = torch.tensor([[[1, 2, 3]]], dtype=torch.int32)
    idx = torch.tensor([[[[0, 0, 0], [0, 1, 0], [0, 1, 2]]]], dtype=torch.int32)
    ref = block_sparse_attention(q, k, v, num, idx, 16, 0.25)[0]
    torch.testing.assert_close(mod.block_sparse_attention(q, k, v, num, idx, 16, 0.25)[0], ref)
    monkeypatch.setenv("LOCAL_KERNELS", f"hf-sparse-attn/sparse-prefill-kernels={repo}")
    via_env = kernels.get_kernel("hf-sparse-attn/sparse-prefill-kernels", version=1, backend="cpu")
    torch.testing.assert_close(via_env.block_sparse_attention(q, k, v, num, idx, 16, 0.25)[0], ref)


def test_load_indexer_round_trip_from_rendered_repo(hub):
    model = load_indexer(build(qwen3_config()), hub["tmp"] / "sparse")
    ids = torch.arange(100).remainder(128)[None]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, _reference_logits(hub, ids))


def _pinned_ops(repo: Path, pin_overrides: dict | None = None):
    from hf_sparse_attn.hub.publish import kernel_pin
    from hf_sparse_attn.runtime.remote_model import HubKernelOps

    ops = HubKernelOps()
    ops.set_pin({**kernel_pin("hf-sparse-attn/sparse-prefill-kernels", "f" * 40), **(pin_overrides or {})})
    return ops


class _CudaLike:
    """Stands in for a CUDA tensor in the loader's device check (the loader only asks ``is_cuda``)."""

    is_cuda = True


def test_kernel_pin_is_a_commit_and_verified_by_hash(tmp_path, monkeypatch):
    pytest.importorskip("kernels")
    repo = build_kernel_repo(tmp_path / "kr")
    monkeypatch.setenv("LOCAL_KERNELS", f"hf-sparse-attn/sparse-prefill-kernels={repo}")
    ops = _pinned_ops(repo)
    module = ops.module(_CudaLike())
    assert module is not None and hasattr(module, "block_sparse_attention")


def test_kernel_files_that_differ_from_the_pin_raise(tmp_path, monkeypatch):
    pytest.importorskip("kernels")
    from hf_sparse_attn.runtime.remote_model import KernelIntegrityError

    repo = build_kernel_repo(tmp_path / "kr")
    ops = _pinned_ops(repo)  # hashes of the untampered build
    target = repo / "build" / "torch-universal" / "common.py"
    target.write_text(target.read_text() + "\nEVIL = True\n")
    monkeypatch.setenv("LOCAL_KERNELS", f"hf-sparse-attn/sparse-prefill-kernels={repo}")
    with pytest.raises(KernelIntegrityError, match="common.py"):
        ops.module(_CudaLike())


def test_unpinned_kernel_repo_runs_the_reference_and_says_why(caplog):
    from hf_sparse_attn.runtime.remote_model import HubKernelOps

    ops = HubKernelOps()
    ops.set_pin({"repo": "hf-sparse-attn/sparse-prefill-kernels", "revision": "main"})
    with caplog.at_level("WARNING", logger="sparse_prefill"):
        assert ops.module(_CudaLike()) is None
    assert "40-hex commit" in caplog.text and "reference" in caplog.text


def test_a_second_kernel_pin_in_one_process_is_refused(caplog):
    from hf_sparse_attn.runtime.remote_model import HubKernelOps

    ops = HubKernelOps()
    ops.set_pin({"repo": "a/b", "revision": None})
    ops.module(_CudaLike())
    ops.set_pin({"repo": "a/b", "revision": None})  # same pin: fine
    with pytest.raises(RuntimeError, match="same kernel pin"):
        ops.set_pin({"repo": "a/b", "revision": "1" * 40})


def test_publish_refuses_an_out_folder_with_other_files(hub, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".env").write_text("HF_TOKEN=secret")
    with pytest.raises(ValueError, match=r"\.env"):
        render_repo(out, hub["tmp"] / "indexer", "test-org/tiny-base", model_dir=hub["tmp"] / "base")
    with pytest.raises(ValueError, match="input folder"):
        render_repo(
            hub["tmp"] / "indexer",
            hub["tmp"] / "indexer",
            "test-org/tiny-base",
            model_dir=hub["tmp"] / "base",
        )


def test_push_uploads_exactly_the_rendered_files(hub, tmp_path, monkeypatch):
    import huggingface_hub

    from hf_sparse_attn.hub.publish import push

    out = render_repo(
        tmp_path / "out", hub["tmp"] / "indexer", "test-org/tiny-base", model_dir=hub["tmp"] / "base"
    )
    calls = {}
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **k: calls.update(k) or "ok")
    push(out, "test-org/x")
    assert sorted(calls["allow_patterns"]) == sorted(
        p.name for p in out.iterdir() if not p.name.startswith(".hf_sparse_attn")
    )
    (out / "id_rsa").write_text("key")
    with pytest.raises(ValueError, match="id_rsa"):
        push(out, "test-org/x")


def test_publish_refuses_a_local_base_model_path_and_an_unpinned_base(hub, tmp_path):
    with pytest.raises(ValueError, match="not a local path"):
        render_repo(
            tmp_path / "a", hub["tmp"] / "indexer", str(hub["tmp"] / "base"), model_dir=hub["tmp"] / "base"
        )
    with pytest.raises(ValueError, match="40-hex commit"):
        render_repo(tmp_path / "b", hub["tmp"] / "indexer", "test-org/tiny-base", "main")


def test_publish_offline_needs_a_commit_sha_up_front(monkeypatch):
    from hf_sparse_attn.hub.publish import resolve_revision

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="--base-revision must be a 40-hex commit sha when offline"):
        resolve_revision("Qwen/Qwen3-8B", None, "base model", "--base-revision")
    assert resolve_revision("Qwen/Qwen3-8B", "a" * 40, "base model", "--base-revision") == "a" * 40


def test_a_loaded_remote_repo_does_not_take_over_installed_models(hub, monkeypatch):
    """The remote file re-registers "sparse_prefill" on import; models made with the installed
    package must keep running the installed code, and the remote model its own."""
    from transformers import AutoModelForCausalLM

    import hf_sparse_attn.ops

    calls = []
    library_kernel = hf_sparse_attn.ops.block_sparse_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return library_kernel(*args, **kwargs)

    monkeypatch.setattr(hf_sparse_attn.ops, "block_sparse_attention", spy)
    installed = hub["model"]
    remote = AutoModelForCausalLM.from_pretrained(
        hub["tmp"] / "full", trust_remote_code=True, attn_implementation="sparse_prefill"
    )
    ids = torch.arange(100).remainder(128)[None]
    with torch.no_grad():
        remote(ids)
        assert not calls  # the remote model ran its own copy
        torch.testing.assert_close(installed(ids).logits, _reference_logits(hub, ids))
    assert calls  # the installed model ran the installed copy
    hsa.register()


def test_bundle_refuses_a_runtime_module_that_imports_a_module_object(tmp_path, monkeypatch):
    from hf_sparse_attn.hub import bundle

    shutil.copytree(bundle.RUNTIME_DIR, tmp_path / "runtime")
    (tmp_path / "runtime" / "extra.py").write_text("from . import log\n")
    monkeypatch.setattr(bundle, "RUNTIME_DIR", tmp_path / "runtime")
    with pytest.raises(RuntimeError, match=r"extra.py imports module objects \['log'\]"):
        bundle.runtime_modules()


def test_pipeline_accepts_the_remote_class_without_a_not_supported_error(hub):
    import logging

    from transformers import AutoModelForCausalLM, pipeline

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    pipes = logging.getLogger("transformers.pipelines.base")
    pipes.addHandler(handler)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            hub["tmp"] / "full", trust_remote_code=True, attn_implementation="sparse_prefill"
        )
        pipeline("text-generation", model=model, tokenizer=tiny_tokenizer())
    finally:
        pipes.removeHandler(handler)
        hsa.register()
    assert type(model).__name__ == "SparseQwen3ForCausalLM"
    assert not [r for r in records if "not supported" in r.getMessage()]


def test_interrupted_kernel_build_leaves_the_previous_build_whole(tmp_path, monkeypatch):
    repo = build_kernel_repo(tmp_path / "kr")
    variant = repo / "build" / "torch-universal"

    def files() -> dict:
        return {p.relative_to(variant): p.read_bytes() for p in variant.rglob("*") if p.is_file()}

    before, original, writes = files(), Path.write_text, []

    def write_then_fail(self, *args, **kwargs):
        writes.append(self)
        if len(writes) == 3:
            raise OSError("disk full")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        build_kernel_repo(tmp_path / "kr")
    monkeypatch.undo()
    assert files() == before  # not two new files over an emptied folder
    assert sorted(p.name for p in (repo / "build").iterdir()) == ["torch-universal"]  # no staging left
    build_kernel_repo(tmp_path / "kr")
    assert files() == before


def test_a_failed_render_leaves_the_previous_render_whole_and_a_fresh_out_absent(hub, tmp_path, monkeypatch):
    """Each file was atomic but the render was not: a failure part-way left the new indexer beside the
    old config, README and manifest, which `push` would upload as one repo."""
    import hf_sparse_attn.hub.publish as publish

    args = ("test-org/tiny-base",)
    out = render_repo(tmp_path / "out", hub["tmp"] / "indexer", *args, model_dir=hub["tmp"] / "base")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    changed = tmp_path / "indexer2"
    shutil.copytree(hub["tmp"] / "indexer", changed)
    config = json.loads((changed / "sparse_config.json").read_text())
    (changed / "sparse_config.json").write_text(json.dumps({**config, "top_k": 5}))

    def fail(_out):
        raise OSError("disk full")

    monkeypatch.setattr(publish, "write_modeling_file", fail)
    with pytest.raises(OSError, match="disk full"):
        render_repo(out, changed, *args, model_dir=hub["tmp"] / "base")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(OSError, match="disk full"):
        render_repo(tmp_path / "fresh", changed, *args, model_dir=hub["tmp"] / "base")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["indexer2", "out"]  # no staging folder left
    monkeypatch.undo()
    render_repo(out, changed, *args, model_dir=hub["tmp"] / "base")
    assert json.loads((out / "config.json").read_text())["sparse_attention"]["top_k"] == 5
    (tmp_path / "plain").mkdir()
    plain = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert stat.S_IMODE(out.stat().st_mode) == plain  # not a temp folder's 0o700


def test_publish_names_a_missing_full_checkpoint(hub, tmp_path):
    with pytest.raises(ValueError, match="--full .*missing: no such directory"):
        render_repo(
            tmp_path / "o", hub["tmp"] / "indexer", "test-org/tiny-base", model_dir=tmp_path / "missing"
        )


def test_the_bundled_proxy_lists_every_file_it_holds():
    """Its manifest left out the training summaries, so `push` refused the folder as it ships."""
    from hf_sparse_attn.hub.publish import _unlisted

    assert _unlisted(ROOT / "hf_sparse_attn/assets/proxy-qwen3") == []


def test_bundle_proxy_lists_its_summaries_and_a_failed_bundle_leaves_the_previous_one(
    hub, tmp_path, monkeypatch
):
    """bundle_proxy deleted the bundled folder before rendering into it, so a failed bundle left none."""
    import hf_sparse_attn.hub.publish as publish
    from hf_sparse_attn.hub.publish import _unlisted
    from hf_sparse_attn_lab.proxy import bundle_proxy

    trained = tmp_path / "trained"
    shutil.copytree(hub["tmp"] / "base", trained)
    for path in (hub["tmp"] / "indexer").iterdir():
        shutil.copy(path, trained / path.name)
    (trained / "training_summary.json").write_text('{"steps_done": 2}')
    (trained / "distill_summary.json").write_text('{"steps": 3}')
    out = bundle_proxy(trained, tmp_path / "bundle")
    assert _unlisted(out) == [] and (out / "training_summary.json").read_text() == '{"steps_done": 2}'
    assert "training_summary.json" in json.loads((out / publish.MANIFEST).read_text())["files"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (trained / "training_summary.json").write_text('{"steps_done": 5}')

    def fail(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(publish, "_copy_tokenizer", fail)
    with pytest.raises(OSError, match="disk full"):
        bundle_proxy(trained, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.undo()
    bundle_proxy(trained, out)  # over its own previous bundle: every file listed, none stray
    assert (out / "training_summary.json").read_text() == '{"steps_done": 5}'
    with pytest.raises(ValueError, match="would replace the rendered config.json"):
        render_repo(
            tmp_path / "x",
            trained,
            "test-org/tiny-base",
            model_dir=trained,
            extra_files=[trained / "config.json"],
        )
    with pytest.raises(FileNotFoundError, match="extra_files: no such file"):
        render_repo(
            tmp_path / "x", trained, "test-org/tiny-base", model_dir=trained, extra_files=[tmp_path / "nope"]
        )
