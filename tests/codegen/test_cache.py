"""codegen.cache: generated source on disk, named by hash, written atomically, reused.

Each test gets its own cache folder, so entries and Numba's index files are its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from codegen import cache

SOURCE = textwrap.dedent('''\
    import numpy as np
    from numba import njit


    @njit(cache=True)
    def weighted(x, k):
        total = 0.0
        for i in range(x.shape[0]):
            total += (i + 1) * x[i] * k
        return total
''')
OPTIONS = {"dtype": "float64", "parallel": False}


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("SYMNET_CACHE_DIR", str(folder))
    return folder


def _unique_source(tag: str) -> str:
    """Source not imported before in this process (modules are kept in sys.modules)."""
    return SOURCE + f"\nTAG = {tag!r}\n"


def test_a_change_to_what_kernels_call_means_new_entries(tmp_path, monkeypatch):
    """Numba's cache does not notice that a function a cached kernel called has changed:
    the text of codegen's modules that generated code calls is part of every name."""
    (tmp_path / "blas.py").write_text("x = 1\n")
    monkeypatch.setattr(cache, "__file__", str(tmp_path / "cache.py"))
    monkeypatch.setattr(cache, "RUNTIME_FILES", ("blas.py",))
    cache.runtime_fingerprint.cache_clear()
    try:
        before = cache.entry_name(SOURCE, OPTIONS)
        assert before == cache.entry_name(SOURCE, OPTIONS)
        (tmp_path / "blas.py").write_text("x = 2\n")
        cache.runtime_fingerprint.cache_clear()
        assert cache.entry_name(SOURCE, OPTIONS) != before
    finally:
        monkeypatch.undo()
        cache.runtime_fingerprint.cache_clear()


def test_runtime_files_are_codegen_modules():
    folder = os.path.dirname(cache.__file__)
    assert all(os.path.isfile(os.path.join(folder, name)) for name in cache.RUNTIME_FILES)


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMNET_CACHE_DIR", str(tmp_path / "a" / "b"))
    assert cache.cache_dir() == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    monkeypatch.delenv("SYMNET_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "symnet"


def test_same_source_same_entry_and_a_new_one_for_any_change(monkeypatch):
    name = cache.entry_name(SOURCE, OPTIONS)
    assert name == cache.entry_name(SOURCE, dict(reversed(list(OPTIONS.items()))))
    others = {
        cache.entry_name(SOURCE + "\n", OPTIONS),
        cache.entry_name(SOURCE, {**OPTIONS, "parallel": True}),
        cache.entry_name(SOURCE, {**OPTIONS, "dtype": "float32"}),
        cache.entry_name(SOURCE, {**OPTIONS, "symnet": "0.2.0"}),
    }
    monkeypatch.setattr(cache.numba, "__version__", "0.0.1-test")
    others.add(cache.entry_name(SOURCE, OPTIONS))
    assert name not in others and len(others) == 5
    assert name.startswith("symnet_") and name.isidentifier()


def test_load_writes_once_and_imports(cache_dir, monkeypatch):
    source = _unique_source("write-once")
    module = cache.load_module(source, OPTIONS)
    path = cache_dir / f"{cache.entry_name(source, OPTIONS)}.py"
    assert path.is_file() and path.read_text().endswith(source)
    x = np.arange(4.0)
    assert module.weighted(x, 2.0) == pytest.approx(2 * float(np.dot(np.arange(1, 5), x)))
    assert not list(cache_dir.glob("*.tmp"))  # the atomic write left nothing behind

    writes = []
    monkeypatch.setattr(cache, "atomic_write", lambda *a, **k: writes.append(a))
    stamp = path.stat().st_mtime_ns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = cache.load_module(source, OPTIONS)
    assert again is module and writes == [] and path.stat().st_mtime_ns == stamp


@pytest.mark.parametrize("damage", ["truncate", "garble", "empty", "binary"])
def test_damaged_entry_is_detected_and_rewritten(cache_dir, damage):
    source = _unique_source(f"damaged-{damage}")
    path = cache_dir / f"{cache.entry_name(source, OPTIONS)}.py"
    cache_dir.mkdir(parents=True, exist_ok=True)
    good = f"# symnet cache entry {path.stem}\n" + source
    if damage == "truncate":
        path.write_text(good[: len(good) // 2])
    elif damage == "garble":
        path.write_text(good.replace("total += ", "total -= "))
    elif damage == "empty":
        path.write_text("")
    else:
        path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.warns(RuntimeWarning, match="damaged"):
        module = cache.load_module(source, OPTIONS)
    assert path.read_text() == good
    assert module.weighted(np.ones(3), 1.0) == 6.0  # the garbled `-=` was not imported


def test_another_process_reuses_the_entry(cache_dir):
    source = _unique_source("subprocess")
    module = cache.load_module(source, OPTIONS)
    x = np.linspace(-1.0, 2.0, 7)
    expected = module.weighted(x, 0.5)
    path = cache_dir / f"{cache.entry_name(source, OPTIONS)}.py"
    stamp = path.stat().st_mtime_ns
    assert list(cache_dir.rglob("*.nbi")), "numba wrote no cache index beside the module"
    script = textwrap.dedent(f"""
        import warnings
        import numpy as np
        from codegen import cache
        warnings.simplefilter("error")
        module = cache.load_module({source!r}, {OPTIONS!r})
        print(repr(module.weighted(np.linspace(-1.0, 2.0, 7), 0.5)))
        print(sum(module.weighted.stats.cache_hits.values()))
    """)
    env = {**os.environ, "SYMNET_CACHE_DIR": str(cache_dir)}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    value, hits = run.stdout.split()
    assert float(value) == expected
    assert path.stat().st_mtime_ns == stamp  # found intact, not rewritten
    assert int(hits) >= 1  # numba loaded machine code from the cache


def test_numba_files_damaged_are_detected_and_rebuilt(cache_dir):
    source = _unique_source("numba-damaged")
    script = textwrap.dedent(f"""
        import warnings
        import numpy as np
        from codegen import cache
        module = cache.load_module({source!r}, {OPTIONS!r})
        print(repr(module.weighted(np.arange(5.0), 2.0)))
    """)
    env = {**os.environ, "SYMNET_CACHE_DIR": str(cache_dir)}

    def run():
        done = subprocess.run([sys.executable, "-W", "always", "-c", script], env=env,
                              capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        return done

    first = run()  # compiles and writes numba's index (.nbi) and machine code (.nbc)
    numba_files = sorted(cache_dir.rglob("*.nb[ic]"))
    assert {p.suffix for p in numba_files} == {".nbi", ".nbc"}
    for path in numba_files:  # truncate them, as a full disk or a crash might
        path.write_bytes(path.read_bytes()[:40])
    second = run()
    assert "numba's cache for" in second.stderr and "was damaged" in second.stderr
    expected = 2 * float(np.dot(np.arange(5), np.arange(1, 6)))
    assert second.stdout == first.stdout == f"{expected!r}\n"
    third = run()  # rebuilt: loads cleanly again
    assert "damaged" not in third.stderr and third.stdout == first.stdout


def test_a_version_change_never_reuses_an_old_entry(cache_dir, monkeypatch):
    source = _unique_source("versions")
    old = cache.load_module(source, {**OPTIONS, "symnet": "0.1.0"})
    old_path = cache_dir / f"{old.__name__}.py"
    stamp = old_path.stat().st_mtime_ns
    new = cache.load_module(source, {**OPTIONS, "symnet": "0.2.0"})
    monkeypatch.setattr(cache.np, "__version__", "0.0.1-test")
    newer = cache.load_module(source, {**OPTIONS, "symnet": "0.2.0"})
    names = {old.__name__, new.__name__, newer.__name__}
    assert len(names) == 3 and {p.stem for p in cache_dir.glob("*.py")} == names
    assert old_path.stat().st_mtime_ns == stamp  # the old entry was neither read into nor reused
    assert old is not new is not newer
    assert "0.0.1-test" in str(cache.toolchain()) and "python" in cache.toolchain()


_COMPILER = textwrap.dedent("""
    import sys, time, warnings
    from pathlib import Path
    import numpy as np
    warnings.simplefilter("error")
    import symnet as sn
    go = Path(sys.argv[1])
    while not go.exists():  # start together, to compile at the same moment
        time.sleep(0.01)
    sn.manual_seed(0)
    model = sn.Sequential(sn.Linear(2, 3), sn.Tanh(), sn.Linear(3, 1)).to(np.float64)
    step = sn.compile(model, sn.MSELoss(), sn.optim.SGD(model.parameters(), lr=0.1))
    X = np.linspace(-1.0, 1.0, 8).reshape(4, 2)
    print(*[repr(step(X, X[:, :1] * X[:, 1:])) for _ in range(3)])
""")


def test_processes_compiling_one_model_at_once_all_succeed_and_agree(cache_dir, tmp_path):
    go = tmp_path / "go"
    env = {**os.environ, "SYMNET_CACHE_DIR": str(cache_dir)}
    children = [subprocess.Popen([sys.executable, "-c", _COMPILER, str(go)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(3)]
    go.touch()
    results = [child.communicate(timeout=300) for child in children]
    for child, (_, err) in zip(children, results):
        assert child.returncode == 0, err
    outputs = {out for out, _ in results}
    assert len(outputs) == 1, outputs
    losses = [float(v) for v in outputs.pop().split()]
    assert len(losses) == 3 and losses[2] < losses[0]
    assert not list(cache_dir.rglob("*.tmp*"))  # every write completed or was cleaned up
    entries = list(cache_dir.glob("symnet_*.py"))
    for path in entries:  # each entry intact: its stamp line names it
        assert path.read_text().startswith(f"# symnet cache entry {path.stem}\n")


# --- a folder others can write to is a code path: refused, never used as is -------------

@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702, 0o1777], ids=oct)
def test_a_cache_folder_others_can_write_to_is_refused(cache_dir, mode):
    # Anyone who can write there could plant a module, its bytecode or a Numba pickle, and
    # it would run here; /tmp's sticky bit (0o1777) does not stop new files either.
    cache_dir.mkdir()
    cache_dir.chmod(mode)
    with pytest.raises(PermissionError, match="writable by other users") as refused:
        cache.load_module(_unique_source(f"loose-{mode:o}"), OPTIONS)
    assert f"chmod -R go-w {cache_dir}" in str(refused.value)
    assert "SYMNET_CACHE_DIR" in str(refused.value)
    assert os.listdir(cache_dir) == []  # nothing written into it, nothing imported from it


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="giving a folder to another user needs root")
def test_a_cache_folder_owned_by_another_user_is_refused(cache_dir):
    cache_dir.mkdir(mode=0o700)
    os.chown(cache_dir, os.geteuid() + 4242, -1)
    with pytest.raises(PermissionError, match="owned by another user") as refused:
        cache.cache_dir()
    assert "SYMNET_CACHE_DIR" in str(refused.value)


def test_a_pycache_others_can_write_to_is_refused_where_they_can_reach_it(cache_dir):
    # Python's bytecode and Numba's index and machine code live in __pycache__.
    (cache_dir / "__pycache__").mkdir(parents=True)
    (cache_dir / "__pycache__").chmod(0o777)
    cache_dir.chmod(0o755)
    with pytest.raises(PermissionError, match="__pycache__ is writable by other users"):
        cache.cache_dir()
    cache_dir.chmod(0o700)  # no one else can enter the folder: what is inside is safe
    assert cache.cache_dir() == cache_dir


def test_a_new_cache_folder_is_private_whatever_the_umask(cache_dir):
    previous = os.umask(0)
    try:
        cache.load_module(_unique_source("private"), OPTIONS)
    finally:
        os.umask(previous)
    for folder in (cache_dir, cache_dir / "__pycache__"):
        assert oct(folder.stat().st_mode & 0o777) == oct(0o700), folder
