"""The README's first screen, as CI runs it: the two commands of its first ```sh block (the
main job and the test command) and the output it promises for the first one.

    python3 scripts/readme.py command N   # print command N (1 or 2) exactly as written
    python3 scripts/readme.py check       # run command 1 in the checkout (as a newcomer would
                                          # on a fresh clone: no ./tally-data yet) and compare
                                          # its output with the ```text block, `…` matching
                                          # anything; exit 1 naming the first difference

Reading the commands from the README means CI and the README cannot drift apart.
"""
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blocks(kind):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    return re.findall(r"```" + kind + r"\n(.*?)```", text, re.S)


def command(n):
    lines = [l for l in blocks("sh")[0].splitlines() if l.strip()]
    # Strip the trailing "# explanation" (commands here contain no other '#').
    return lines[n - 1].split("#", 1)[0].strip()


def matches(expected, actual):
    pattern = ".*".join(re.escape(part) for part in expected.split("…"))
    return re.fullmatch(pattern, actual) is not None


def clean():
    for leftover in ("tally-data", "rejects.csv"):
        path = os.path.join(ROOT, leftover)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def check():
    cmd = command(1)
    clean()
    print(f"$ {cmd}", flush=True)
    run = subprocess.run(["bash", "-c", cmd], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    sys.stdout.write(run.stdout)
    if run.returncode != 0:
        sys.exit(f"README's first command exited {run.returncode}")
    expected = blocks("text")[0].splitlines()
    actual = run.stdout.splitlines()
    for i, want in enumerate(expected):
        got = actual[i] if i < len(actual) else "<no line>"
        if not matches(want, got):
            sys.exit(f"README promises line {i + 1}:\n  {want}\nbut the command printed:\n  {got}")
    if len(actual) != len(expected):
        sys.exit(f"README promises {len(expected)} lines, the command printed {len(actual)}")
    clean()
    print(f"README's first command printed the {len(expected)} lines it promises")


if __name__ == "__main__":
    if sys.argv[1:2] == ["command"]:
        print(command(int(sys.argv[2])))
    elif sys.argv[1:] == ["check"]:
        check()
    else:
        sys.exit(__doc__)
