"""How restic's failures are named (host/restic.py `_classify`), from the stderr restic prints."""

from __future__ import annotations

from maculaos.host.restic import ResticFailure, _classify, rest_repository

#: restic 0.18 opening a rest-server repository that asks for a login: the location comes last.
REFUSED = ("Fatal: unable to open config file: Stat: unexpected HTTP response (401): 401 Unauthorized\n"
           "Is there a repository at the following location?\n{location}\n")


def test_a_refused_login_on_a_port_with_507_in_it_is_not_a_full_target() -> None:
    """The repository's port (here 50761) holds "507", the status of a full rest-server: still a refusal."""
    repo = rest_repository("http://127.0.0.1:50761/macula-nuc-02", "pw")
    error = _classify(1, REFUSED.format(location=repo.location), repo)
    assert error.failure is ResticFailure.ACCESS_DENIED, error
    assert "asks for credentials" in str(error) and "full" not in str(error)


def test_a_full_rest_server_is_a_full_target() -> None:
    repo = rest_repository("http://127.0.0.1:8000/node", "pw")
    for said in ("unexpected HTTP response (507): 507 Insufficient Storage", "server response (507)"):
        error = _classify(1, f"Fatal: unable to save snapshot: {said}\n", repo)
        assert error.failure is ResticFailure.NO_SPACE and "is full" in str(error), (said, error)
