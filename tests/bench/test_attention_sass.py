"""bench/attention_sass.py: the SASS loop parser (pure Python; the dump itself needs CUDA)."""
import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "attention_sass", Path(__file__).resolve().parents[2] / "bench" / "attention_sass.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
loop_opcodes, loops = _mod.loop_opcodes, _mod.loops

SASS = """Function:_int8_attn_fwd
--:-:1:-:1\tLDC R1, c[0x0][0x28];
06:-:-:-:6\t@!P1 BRA LBB0;
LBB1:
--:-:-:-:1\tUIADD3 UR40, UR40, 0x1, URZ;
--:-:-:Y:6\tWARPGROUP.ARRIVE;
--:-:-:-:1\tMUFU.EX2 R217, R217;
--:-:-:-:1\tMUFU.EX2 R222, R222;
--:-:-:-:1\tFFMA R3, R4, R5, -R6;
--:-:-:-:1\t@P2 FMNMX R7, R7, R8, !PT;
02:-:-:-:5\t@!P1 BRA LBB1;
LBB0:
--:-:-:-:1\tMUFU.EX2 R9, R9;
--:-:-:-:5\tEXIT;
"""


def test_loop_opcodes_counts_the_loop_body_only():
    ops = loop_opcodes(SASS)
    assert ops == {"MUFU": 2, "UIADD3": 1, "WARPGROUP": 1, "FFMA": 1, "FMNMX": 1, "BRA": 1}


def test_loop_opcodes_without_a_loop():
    assert loop_opcodes("LBB0:\n--:-:-:-:5\tEXIT;\n") == {}


def test_loops_lists_every_loop_in_order():
    two = SASS.replace("LBB0:\n", "LBB0:\n--:-:-:-:1\tFADD R1, R1, R2;\n--:-:-:-:5\t@P0 BRA LBB0;\n")
    assert loops(two) == [loop_opcodes(SASS), {"FADD": 1, "BRA": 1}]
