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
