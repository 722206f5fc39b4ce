"""The module graph of serve/src (scripts/module_graph.py): no cycle, and the layers
of serve/README.md hold (inference knows nothing of HTTP, jobs or DICOMweb; only the
HTTP layer and the server start-up know the application). The detector itself is
checked on a planted cycle first, so a broken parser cannot pass for a clean graph."""

import subprocess
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import module_graph  # noqa: E402


def test_the_detector_finds_a_planted_cycle_and_ignores_comments_and_tests(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "lib.rs").write_text("pub mod a;\npub mod b;\n")
    (src / "a" / "mod.rs").write_text("pub mod x;\nuse x::f;\n")
    (src / "a" / "x.rs").write_text(
        "// use crate::b; (a comment)\nconst S: &str = \"crate::b::g\";\n"
        "pub fn f() { super::super::b::g() }\n"
    )
    (src / "b.rs").write_text(
        "use crate::a::{self as alias};\npub fn g() {}\n"
        "#[cfg(test)]\nmod tests { use crate::a::x; }\n"
    )
    graph = module_graph.edges(src)
    assert graph["crate::a"] == {"crate::a::x"}
    assert graph["crate::a::x"] == {"crate::b"}
    assert graph["crate::b"] == {"crate::a"}
    assert module_graph.cycles(graph) == [["crate::a", "crate::a::x", "crate::b"]]
    # Break it: b no longer uses a.
    (src / "b.rs").write_text("pub fn g() {}\n")
    assert module_graph.cycles(module_graph.edges(src)) == []


def test_serve_has_no_module_cycle_and_keeps_its_layers():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "module_graph.py"), str(ROOT / "serve" / "src")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "0 cycles" in proc.stderr
    graph = module_graph.edges(ROOT / "serve" / "src")
    layer = lambda m: m.split("::")[1] if "::" in m else "crate"
    for mod, deps in graph.items():
        if layer(mod) == "inference":
            assert not {layer(d) for d in deps} & {"http", "state", "jobs", "dicomweb", "server"}, (mod, deps)
        if layer(mod) in ("dicomweb", "jobs", "inference", "state"):
            assert not any(layer(d) == "http" for d in deps), (mod, deps)
    # The application is composed in http/mod.rs from one module per protocol.
    assert {"crate::http::v1", "crate::http::oip", "crate::http::dicomweb", "crate::http::jobs"} <= graph["crate::http"]
