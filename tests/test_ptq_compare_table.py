"""benchmarks/ptq_compare.py's summary: each tool's best row per precision by SQNR, gaps shown, not dropped."""


def _row(tool, method, fam, bits, sqnr, agree=90.0, na=None, top1=None):
    r = {"model": "m", "tool": tool, "method": method, "fmt": fam, "bits": bits, "agreement": agree,
         "sqnr_db": sqnr, "quantize_s": 1.0, "packed_bytes": 1000, "na": na}
    return r | ({"top1": top1} if top1 is not None else {})


def test_summary_picks_the_best_row_of_each_tool_by_sqnr(benchmark_module):
    pc = benchmark_module("ptq_compare")
    rows = [_row("edgevit", "rtn", "int", "w4a8", 10.0, agree=99.0), _row("edgevit", "brecq", "int", "w4a8", 20.0),
            _row("onnxruntime", "quantize_static/MinMax", "int", "w4a8", 5.0),
            _row("brevitas", "calib+GPTQ+bias-corr", "int", "w4a8", 15.0, top1=88.0),
            _row("onnxruntime", "quantize_static", "int", "w4a6", None, na="no 6-bit"),
            _row("edgevit", "rtn", "int", "w4a6", 7.0)]
    lines = pc.summary(rows)
    w4a8 = next(line for line in lines if "int w4a8" in line)
    cells = [c.strip() for c in w4a8.strip("|").split("|")]
    assert cells[2].startswith("brecq:") and "**20.0 dB**" in cells[2]       # not the rtn row with more agreement
    assert cells[3].startswith("quantize_static/MinMax") and "top-1 88.00" in cells[4]
    w4a6 = next(line for line in lines if "int w4a6" in line)
    assert w4a6.rstrip(" |").endswith("–")                                  # brevitas absent, onnxruntime n/a
    assert "fp4" not in "".join(lines)                                      # edgevit ran no fp4 row: no line
    md = pc.markdown(rows, {"data": {"m": "d"}, "iters_per_unit": 400, "iters_mobilenetv2": 400, "note": "n"})
    assert md.count("<details>") == 1 and md.rstrip().endswith("</details>") and "n/a | no 6-bit" in md


def test_grid_narrowed_and_sweep_rows_mapped(benchmark_module):
    """ptq_compare.py is grid + sweep: its grid narrows by model/precision/peers, and sweep rows map back to
    its rows (FP32 reference first, peer methods by their old names, one n/a row per peer and precision)."""
    from edgevit.sweep import load_grid
    pc = benchmark_module("ptq_compare")
    full = load_grid(pc.GRID, hash_models=False)
    assert len(full.cells) == 92
    g = pc.narrow(load_grid(pc.GRID, hash_models=False), {"mobilenet-mini"}, {("int", "w4a8")}, True, 300, 50, None)
    tools = sorted((c.spec["tool"], c.spec["method"]) for c in g.cells)
    assert tools == [("brevitas", "gptq"), ("brevitas", "rtn"), ("edgevit", "adaround"), ("edgevit", "brecq"),
                     ("edgevit", "rtn"), ("onnxruntime", "MinMax"), ("onnxruntime", "Percentile")]
    assert all(c.spec["eval_limit"] == 300 for c in g.cells)
    assert {c.spec["recipe"]["reconstruction"]["iters"] for c in g.cells if c.spec["method"] in ("adaround", "brecq")} == {50}
    cell = {"model": "m", "fmt": "int", "bits": "w4a8", "precision": "int:w4a8", "key": "k", "status": "ok",
            "data": "d", "fp32_top1": 90.0, "fp32_bytes": 4000, "top1": 89.0, "agreement": 97.0, "sqnr_db": 20.0,
            "size_bytes": 1000, "quantize_s": 1.0}
    cells = [cell | {"tool": "edgevit", "method": "brecq", "units": 5},
             cell | {"tool": "onnxruntime", "method": "MinMax"},
             cell | {"tool": "brevitas", "method": "gptq", "as_edgevit_checkpoint": {"sqnr_db": 19.0}},
             cell | {"tool": "onnxruntime", "method": "MinMax", "precision": "fp4:w4a6", "status": "n/a", "na": "no FP4"},
             cell | {"tool": "onnxruntime", "method": "Percentile", "precision": "fp4:w4a6", "status": "n/a", "na": "no FP4"}]
    rows, notes = pc.to_rows(cells, peers=True)
    assert notes == {"m": "d"}
    assert [(r["tool"], r["method"]) for r in rows] == [
        ("fp32", "-"), ("edgevit", "brecq"), ("onnxruntime", "quantize_static/MinMax"),
        ("brevitas", "calib+GPTQ+bias-corr"), ("onnxruntime", "quantize_static"), ("onnxruntime", "MatMul4BitsQuantizer")]
    assert rows[0]["top1"] == 90.0 and rows[0]["packed_bytes"] == 4000 and rows[1]["units"] == 5
    assert "top-1 89.00" in "".join(pc.summary(rows))
