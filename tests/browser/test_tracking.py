"""The consumer tracking page and the operator view, in headless Chromium against the demo.

Run: python3 -m pytest -v tests/browser   (after `cargo build --release -p client-sim`)
Screenshots and browser consoles: target/browser-artifacts/.
"""

import urllib.parse

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conftest import DESKTOP, Blocked, distance_m, save

HAPPY_PATH = ["confirmed", "preparing", "driver_assigned", "picked_up", "en_route", "arriving", "delivered"]


def page_state(driver):
    return driver.execute_script("return window.trackline ? JSON.parse(JSON.stringify(window.trackline)) : null")


def wait_for(driver, what, timeout_s, condition):
    """Waits until condition(state) is truthy and returns its value; saves a screenshot on timeout."""
    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.2).until(
            lambda d: condition(page_state(d) or {}), message=what
        )
    except Exception:
        save(driver, "timeout-" + what.replace(" ", "-"))
        raise


def open_tracking(browser_factory, demo):
    driver = browser_factory()
    driver.get(demo.tracking_url)
    return driver


def test_page_is_on_webtransport_when_quic_is_allowed(browser_factory, demo):
    driver = open_tracking(browser_factory, demo)
    wait_for(driver, "webtransport", 20, lambda s: s.get("transport") == "webtransport")
    wait_for(driver, "positions over webtransport", 15, lambda s: s.get("positions", 0) >= 2)
    assert driver.find_element(By.ID, "transport").text == "via WebTransport"
    assert "(c) OpenStreetMap contributors" in driver.find_element(By.ID, "attribution").text
    save(driver, "track-webtransport")


def test_marker_follows_the_simulated_driver(browser_factory, demo):
    driver = open_tracking(browser_factory, demo)
    first = wait_for(driver, "first marker", 20, lambda s: s.get("marker"))
    # The marker moves on its own as fixes arrive...
    wait_for(driver, "marker moved", 20, lambda s: s.get("marker") and distance_m(s["marker"], first) > 5)

    # ...and sits where the hub says the driver is: the REST position, read at the same
    # moment, is within a fix interval's drive of the drawn marker.
    def close_to_hub(s):
        code, snap = demo.status()
        if code != 200 or not snap.get("position") or not s.get("marker"):
            return False
        s["gap_m"] = distance_m(s["marker"], snap["position"])
        return s if s["gap_m"] < 40 else False

    s = wait_for(driver, "marker near the hub's position", 20, close_to_hub)
    assert s["lastFix"]["delivery_id"] == int(demo.delivery_id)
    save(driver, "track-marker")


def test_eta_counts_down_to_the_hubs_estimate(browser_factory, demo):
    driver = open_tracking(browser_factory, demo)
    wait_for(driver, "eta", 20, lambda s: s.get("eta"))
    eta = driver.find_element(By.ID, "eta")

    def seconds_left():
        m, s = eta.text.split(":")
        return int(m) * 60 + int(s)

    first = eta.text
    WebDriverWait(driver, 5).until(lambda d: eta.text != first, message="the countdown ticks")

    def agrees_with_hub(_):
        code, snap = demo.status()
        if code != 200 or not snap.get("eta"):
            return False
        e = snap["eta"]
        hub_left = (e["ts_ms"] + e["eta_s"] * 1000 - snap["server_time_ms"]) / 1000
        return abs(seconds_left() - hub_left) <= 10

    WebDriverWait(driver, 20, poll_frequency=0.5).until(agrees_with_hub, message="countdown near the hub's ETA")
    # The hub's confidence band is shown as a range of minutes around the countdown.
    detail = driver.find_element(By.ID, "eta-detail").text
    lo, hi = (int(x) for x in detail.split(" min")[0].split("-"))
    assert lo <= seconds_left() / 60 + 1 and hi >= seconds_left() / 60 - 1 and lo < hi, detail


def test_page_falls_back_to_websocket_when_the_webtransport_port_is_unreachable(browser_factory, demo):
    port = demo.webtransport_port()
    with Blocked(("udp", port)):
        driver = open_tracking(browser_factory, demo)
        wait_for(driver, "websocket", 25, lambda s: s.get("transport") == "websocket")
        wait_for(driver, "positions over websocket", 15, lambda s: s.get("positions", 0) >= 2)
        assert driver.find_element(By.ID, "transport").text == "via WebSocket"
        save(driver, "track-websocket")


def test_page_reconnects_and_resumes_after_the_last_event(browser_factory, demo):
    driver = open_tracking(browser_factory, demo)
    s = wait_for(driver, "connected with events", 20, lambda s: s.get("connection") == "open" and s.get("events") and s)
    assert s["connects"] == 1 and s["resumedFrom"] == 0, s
    seq, before = s["lastEventSeq"], s["positions"]
    driver.execute_script("window.tracklineFeed.reconnect()")
    s = wait_for(driver, "reconnected", 20, lambda s: s.get("connects") == 2 and s.get("connection") == "open" and s)
    assert s["resumedFrom"] >= seq > 0, s
    wait_for(driver, "positions after reconnecting", 15, lambda s: s.get("positions", 0) >= before + 2)
    seqs = [e["event_seq"] for e in page_state(driver)["events"]]
    assert seqs == sorted(set(seqs)) and seqs[0] == 1, seqs


def test_reconnect_backoff_doubles_with_jitter_up_to_30_s(browser_factory, demo):
    driver = open_tracking(browser_factory, demo)
    wait_for(driver, "connected", 20, lambda s: s.get("connection") == "open")
    # The page's own module: the wait after n consecutive failures lies in [ceiling/2, ceiling].
    bounds = driver.execute_async_script(
        """const done = arguments[arguments.length - 1];
        import('/web/transport.js').then((m) => done([1, 2, 3, 4, 5, 6, 7, 12].map((n) =>
            [n, m.backoffDelayMs(n, () => 0), m.backoffDelayMs(n, () => 1), m.backoffDelayMs(n)])));"""
    )
    for n, low, high, drawn in bounds:
        ceiling = min(30000, 500 * 2 ** (n - 1))
        assert (low, high) == (ceiling / 2, ceiling), (n, low, high)
        assert low <= drawn <= high, (n, drawn)


def test_silent_driver_shows_location_unavailable_with_the_age_of_the_last_fix(browser_factory, demo):
    assert demo.edge_ports, "the demo did not print the edge's ports"
    driver = open_tracking(browser_factory, demo)
    wait_for(driver, "positions", 20, lambda s: s.get("positions", 0) >= 2)
    banner = driver.find_element(By.ID, "unavailable")
    assert not banner.is_displayed()
    # Cut every driver off from the edge: the hub hears nothing and says so after 30 s.
    with Blocked(("udp", demo.edge_ports["quic"]), ("tcp", demo.edge_ports["https"])):
        wait_for(driver, "location unavailable", 60, lambda s: s.get("unavailableSinceMs") is not None)
        WebDriverWait(driver, 5).until(lambda d: banner.is_displayed(), message="banner shown")
        age = int(banner.get_attribute("data-age-s"))
        assert age >= 30, age
        assert "last seen" in banner.text
        save(driver, "track-location-unavailable")
    # Fixes flow again: the banner goes away.
    wait_for(driver, "location back", 60, lambda s: s.get("unavailableSinceMs") is None)
    WebDriverWait(driver, 5).until(lambda d: not banner.is_displayed(), message="banner hidden")


def test_status_transitions_appear_in_the_timeline(browser_factory, demo):
    driver = open_tracking(browser_factory, demo)
    s = wait_for(driver, "first events", 20, lambda s: s.get("events") and s)
    seen = len(s["events"])
    # The demo moves the status along the happy path during its run.
    s = wait_for(driver, "a new status", 150, lambda s: len(s.get("events", [])) > seen and s)
    done = [li.get_attribute("data-status") for li in driver.find_elements(By.CSS_SELECTOR, "#timeline li.done")]
    assert done == [e["status"] for e in s["events"]]
    assert [HAPPY_PATH.index(x) for x in done] == sorted(HAPPY_PATH.index(x) for x in done), done
    assert len(done) >= 2, done
    code, snap = demo.status()
    assert code == 200 and snap["status"] in done, (snap, done)
    save(driver, "track-timeline")


@pytest.mark.parametrize("case", ["garbage-token", "other-delivery"])
def test_a_wrong_token_shows_an_error_and_no_data(browser_factory, demo, case):
    u = urllib.parse.urlsplit(demo.tracking_url)
    if case == "garbage-token":
        url = f"{demo.origin}{u.path}?token=tl1.not-a-token"
    else:  # a valid token, for another delivery
        other = int(demo.delivery_id) + 1
        url = f"{demo.origin}/track/{other}?{u.query}"
    driver = browser_factory()
    driver.get(url)
    wait_for(driver, "error", 20, lambda s: s.get("error"))
    assert driver.find_element(By.ID, "error").is_displayed()
    s = page_state(driver)
    assert s["marker"] is None and s["lastFix"] is None and s["positions"] == 0 and s["events"] == [], s
    assert s["pickup"] is None and s["status"] is None, s
    assert driver.find_element(By.ID, "transport").get_attribute("data-state") == "refused"
    save(driver, f"track-{case}")


def test_operator_view_shows_deliveries_and_replays_one(browser_factory, demo):
    driver = browser_factory(DESKTOP)
    driver.get(demo.operator_url)
    s = wait_for(driver, "deliveries", 20, lambda s: s.get("deliveries") and s.get("rates") and s)
    wait_for(driver, "fix rate", 20, lambda s: (s.get("rates") or {}).get("fixes_per_s"))
    rows = driver.find_elements(By.CSS_SELECTOR, "#deliveries tr")
    assert len(rows) == len(s["deliveries"]) >= 1
    assert int(driver.find_element(By.ID, "stat-active").text) == len(s["deliveries"])
    save(driver, "ops")

    row = driver.find_element(By.CSS_SELECTOR, f'#deliveries tr[data-id="{demo.delivery_id}"]')
    row.click()
    wait_for(driver, "history", 20, lambda s: s.get("history") and s["history"]["events"])
    driver.find_element(By.ID, "replay-play").click()
    wait_for(driver, "replay", 20, lambda s: s["replay"].get("at", 0) >= 1 and not s["replay"].get("playing"))
    s = page_state(driver)
    assert s["history"]["snapshot"]["delivery_id"] == int(demo.delivery_id)
    assert len(s["history"]["trail"]) >= 2, "the hub sampled the driver's positions"
    save(driver, "ops-replay")


def test_operator_view_refuses_a_consumer_token(browser_factory, demo):
    driver = browser_factory(DESKTOP)
    driver.get(f"{demo.origin}/ops?token={demo.token}")
    wait_for(driver, "ops error", 20, lambda s: s.get("error"))
    assert driver.find_element(By.ID, "error").is_displayed()
    assert page_state(driver)["deliveries"] == []
