"""One study shared through PostgreSQL: a real server for the test (Debian's postgresql: initdb into a
temporary folder, pg_ctl start on a loopback port, stopped at the end), and two netspec tune commands
with their own tune directories, as two machines would run them, against one --storage URL."""
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile

import pytest
from extras import need, need_program
from test_tune import finish, tune_cli, write

optuna = need("optuna")
need("psycopg")

PG_DIRS = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]), reverse=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """The URL of a PostgreSQL server that lives as long as the test. initdb refuses to run as root, so
    as root the server runs as the unprivileged 'postgres' user Debian's package creates."""
    initdb = need_program("initdb", "the PostgreSQL server: apt-get install postgresql", PG_DIRS)
    pg_ctl = os.path.join(os.path.dirname(initdb), "pg_ctl")
    as_user = []
    folder = tempfile.mkdtemp(prefix="netspec-pg-")
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root, the server needs an unprivileged user; Debian's postgresql package "
                        "creates 'postgres'", pytrace=False)
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = [shutil.which("runuser") or "runuser", "-u", "postgres", "--"]
    data, port = os.path.join(folder, "data"), free_port()

    def run(*cmd):
        done = subprocess.run(as_user + list(cmd), capture_output=True, text=True, timeout=120, cwd=folder)
        assert done.returncode == 0, f"{cmd[0]} failed: {done.stdout}{done.stderr}"

    try:
        run(initdb, "-D", data, "-U", "netspec", "--auth=trust", "-E", "UTF8", "--no-sync")
        run(pg_ctl, "-D", data, "-l", os.path.join(folder, "server.log"), "-w", "-t", "60", "-o",
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        yield f"postgresql://netspec@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_user + [pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True,
                       timeout=60, cwd=folder)
        shutil.rmtree(folder, ignore_errors=True)


def test_two_commands_share_one_study_through_postgresql(tmp_path, postgres):
    spec = write(tmp_path, trials=6, epochs=3)
    a, b = tmp_path / "machine-a", tmp_path / "machine-b"
    procs = [tune_cli(spec, "--storage", postgres, "--out", out) for out in (a, b)]
    for proc in procs:
        rc, out, err = finish(proc)
        assert rc == 0, err
        assert "trials ended" in out  # the first to stop may see the other's last trial still running
    study = optuna.load_study(study_name="tiny", storage=postgres.replace("postgresql://", "postgresql+psycopg://"))
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    # two workers raced for the last places: a trial past the budget is recorded as not run, never trained
    surplus = [t for t in study.trials if t not in done]
    assert all(t.state.name == "FAIL" and t.user_attrs["note"] == "not run: the study has its 6 trials"
               for t in surplus)
    assert len(done) == 6 and len({t.number for t in done}) == 6  # none lost, none duplicated
    dirs = {t.user_attrs["run_dir"] for t in done}
    on_disk = {str(out / "trials" / d) for out in (a, b) for d in os.listdir(out / "trials")}
    assert dirs == on_disk and len(dirs) == 6
    assert all(os.listdir(out / "trials") for out in (a, b)), "both commands ran trials"
    assert len({t.user_attrs["pid"] for t in done}) == 2
