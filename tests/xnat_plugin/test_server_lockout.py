"""Login security of the local server: lockout, equal-time failures, user listing, session
expiry and logout, and a listen backlog sized for bursts of connections."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections.abc import Callable

import pytest
import requests

from xnat_plugin.server import RunningServer, SecuritySettings


def _login(server: RunningServer, user: str, password: str) -> requests.Response:
    return requests.put(f"{server.url}/data/services/auth", timeout=30,
                        data={"username": user, "password": password})


def _basic(server: RunningServer, user: str, password: str) -> requests.Response:
    return requests.get(f"{server.url}/data/auth", auth=(user, password), timeout=30)


def _add_user(server: RunningServer, login: str, password: str) -> None:
    made = requests.post(f"{server.url}/xapi/users", auth=(server.user, server.password),
                         timeout=30, json={"username": login, "password": password,
                                           "email": f"{login}@example.org", "enabled": True,
                                           "verified": True})
    assert made.status_code == 201, made.text


def test_lockout_after_failures_across_form_and_basic_auth(
        xnat_server_factory: Callable[..., RunningServer]) -> None:
    server = xnat_server_factory(security=SecuritySettings(
        max_failed_logins=3, max_failed_logins_lockout_duration=1.5))
    _add_user(server, "locky", "right-pw")
    assert _login(server, "locky", "wrong").status_code == 401
    assert _basic(server, "locky", "wrong").status_code == 401
    assert _login(server, "locky", "right-pw").status_code == 200  # a success resets the count
    for attempt in (_login, _basic, _login):
        assert attempt(server, "locky", "wrong").status_code == 401
    locked_form, locked_basic = _login(server, "locky", "right-pw"), _basic(server, "locky", "right-pw")
    assert locked_form.status_code == locked_basic.status_code == 401
    # a locked account answers exactly as an unknown one: no hint whether the user exists
    for _ in range(3):
        _login(server, "ghost", "whatever")
    ghost = _login(server, "ghost", "whatever")
    assert (ghost.status_code, ghost.text) == (locked_form.status_code, locked_form.text)
    assert "locked" not in locked_form.text.lower()
    # other accounts are unaffected; an admin ends the lockout
    assert _basic(server, server.user, server.password).status_code == 200
    unlocked = requests.put(f"{server.url}/xapi/users/locky/enabled/true",
                            auth=(server.user, server.password), timeout=30)
    assert unlocked.status_code == 200, unlocked.text
    assert _login(server, "locky", "right-pw").status_code == 200
    # ... or the lockout duration passes
    for _ in range(3):
        _basic(server, "locky", "wrong")
    assert _basic(server, "locky", "right-pw").status_code == 401
    time.sleep(1.7)
    assert _basic(server, "locky", "right-pw").status_code == 200


@pytest.mark.slow
def test_unknown_user_and_wrong_password_take_the_same_time(
        xnat_server_factory: Callable[..., RunningServer]) -> None:
    server = xnat_server_factory(security=SecuritySettings(max_failed_logins=0))
    _add_user(server, "timed", "right-pw")
    http = requests.Session()
    times: dict[str, list[float]] = {"unknown": [], "wrong": []}
    for i in range(30):  # interleaved, so load on the machine hits both alike
        order = (("unknown", "nobody"), ("wrong", "timed"))
        for kind, user in order if i % 2 else order[::-1]:
            started = time.perf_counter()
            answer = http.put(f"{server.url}/data/services/auth", timeout=30,
                              data={"username": user, "password": f"bad-{i}"})
            times[kind].append(time.perf_counter() - started)
            assert answer.status_code == 401
    unknown, wrong = statistics.median(times["unknown"]), statistics.median(times["wrong"])
    assert abs(unknown - wrong) <= 0.2 * max(unknown, wrong), (unknown, wrong)


def test_user_listing_is_restricted_to_admins(
        xnat_server_factory: Callable[..., RunningServer]) -> None:
    server = xnat_server_factory()
    _add_user(server, "plain", "plain-pw")
    auth = ("plain", "plain-pw")
    for path in ("/data/users", "/xapi/users", f"/xapi/users/{server.user}"):
        answer = requests.get(f"{server.url}{path}", auth=auth, timeout=30)
        assert answer.status_code == 403, (path, answer.text)
        assert "restrictUserListAccessToAdmins" in answer.text
    assert requests.get(f"{server.url}/xapi/users/plain", auth=auth,
                        timeout=30).json()["username"] == "plain"
    assert "plain" in requests.get(f"{server.url}/xapi/users", timeout=30,
                                   auth=(server.user, server.password)).json()
    open_site = xnat_server_factory(security=SecuritySettings(
        restrict_user_list_access_to_admins=False))
    _add_user(open_site, "plain", "plain-pw")
    assert requests.get(f"{open_site.url}/data/users", auth=auth, timeout=30).status_code == 200


def test_sessions_expire_when_idle_and_end_at_logout(
        xnat_server_factory: Callable[..., RunningServer]) -> None:
    server = xnat_server_factory(security=SecuritySettings(session_timeout=1.0))

    def with_cookie(token: str) -> int:
        return requests.get(f"{server.url}/data/auth", cookies={"JSESSIONID": token},
                            timeout=30).status_code

    token = _login(server, server.user, server.password).text
    assert with_cookie(token) == 200
    time.sleep(0.6)
    assert with_cookie(token) == 200  # use refreshes the idle timer
    time.sleep(1.4)
    assert with_cookie(token) == 401
    token = _login(server, server.user, server.password).text
    ended = requests.delete(f"{server.url}/data/JSESSION", cookies={"JSESSIONID": token},
                            timeout=30)
    assert ended.status_code == 200
    assert with_cookie(token) == 401


def _burst(server: RunningServer, n: int) -> list[float]:
    host, port = server.config.host, server.port
    barrier = threading.Barrier(n, timeout=30)
    times: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            barrier.wait()
            started = time.perf_counter()
            with socket.create_connection((host, port), timeout=10) as conn:
                conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
            assert data.startswith(b"HTTP/1.1 200"), data[:80]
            with lock:
                times.append(time.perf_counter() - started)
        except BaseException as exc:  # reported by the test below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[:3]
    assert len(times) == n
    return times


def test_burst_of_50_connections_is_not_held_back_by_the_backlog(
        xnat_server: RunningServer) -> None:
    assert xnat_server.app is not None
    # with the standard library's backlog of 5 every burst has connections that wait for a
    # SYN retransmission (about 1 s); one clean burst out of three shows the backlog is big
    slowest = []
    for _ in range(3):
        slowest.append(max(_burst(xnat_server, 50)))
        if slowest[-1] < 0.9:
            break
    assert min(slowest) < 0.9, slowest
