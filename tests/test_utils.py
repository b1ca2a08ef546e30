"""Shared helpers of `optimum_multipruner.utils`: the callback run when a module is imported."""

import sys

from optimum_multipruner.utils import call_after_import


def test_call_after_import_runs_once_the_module_is_imported(tmp_path, monkeypatch):
    (tmp_path / "multipruner_probe_module.py").write_text("VALUE = 1\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    finders = list(sys.meta_path)
    calls = []
    call_after_import("multipruner_probe_module", lambda: calls.append(sys.modules["multipruner_probe_module"]))
    call_after_import("multipruner_probe_module", lambda: calls.append("second"))
    assert calls == [] and len(sys.meta_path) == len(finders) + 1  # one watcher for both callbacks
    import multipruner_probe_module

    assert calls == [multipruner_probe_module, "second"] and multipruner_probe_module.VALUE == 1
    assert sys.meta_path == finders  # the watcher removed itself
    call_after_import("multipruner_probe_module", lambda: calls.append("already imported"))
    assert calls[-1] == "already imported"
    monkeypatch.delitem(sys.modules, "multipruner_probe_module")
