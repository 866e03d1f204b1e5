"""The UI in a real browser (Debian's Chromium, headless, through its
chromedriver; selenium only drives it). Run by .ci/ui.sh against a fresh
`fleetkv serve`:

    browser.py URL ADMIN_KEY FLEETKV_BIN WORKDIR [SCREENSHOT_COPY]

Builds a cluster of 13 members with the CLI, logs in through the form, opens
the cluster page (13 members, 3 leaders), changes a role with the CLI and
sees the page change within one second without a reload, types a bad filter
on the machine list and sees the caret under the spot, and checks that a
machine named `<script>` is shown as text. Saves screenshots in WORKDIR (and
the cluster page's in SCREENSHOT_COPY when given)."""

import os
import shutil
import subprocess
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

url, key, fleetkv, work = sys.argv[1:5]
copy_to = sys.argv[5] if len(sys.argv) > 5 else None
env = dict(os.environ, RS_ENDPOINT=url, RS_KEY=f"admin:{key}")


def cli(*args):
    out = subprocess.run([fleetkv, *args], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"fleetkv {' '.join(args)}: exit {out.returncode}: {out.stderr}")
    return out.stdout


cli("cluster", "init", "example")
for i in range(1, 14):
    cli("machines", "create", f'{{"Name":"member-{i:02}","Profiles":["example"]}}')
cli("cluster", "role", "example", "member-01", "manager")
for i in (2, 3, 4):
    cli("cluster", "role", "example", f"member-{i:02}", "leader")
cli("machines", "meta", "set", "Name:member-02", "key", "icon", "to", "anchor")
cli("machines", "create", '{"Name":"<script>alert(1)</script>"}')

options = webdriver.ChromeOptions()
options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
    options.add_argument(flag)
service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
driver = webdriver.Chrome(service=service, options=options)
driver.set_page_load_timeout(20)


def wait_for(what, check, seconds):
    deadline = time.monotonic() + seconds
    while True:
        try:
            got = check()
        except Exception:  # an element replaced mid-read: look again
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            driver.save_screenshot(os.path.join(work, "failure.png"))
            raise SystemExit(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.05)


try:
    # Not logged in: the form.
    driver.get(url + "/ui/")
    wait_for("the login form", lambda: "/ui/login" in driver.current_url, 10)
    driver.find_element(By.NAME, "credential").send_keys("admin:wrong")
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for("the refusal", lambda: "wrong user or password" in driver.page_source, 10)
    driver.find_element(By.NAME, "credential").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for("the cluster list", lambda: driver.find_element(By.LINK_TEXT, "example"), 10)
    session = driver.get_cookie("fleetkv_session")
    assert session and session["httpOnly"] and session["sameSite"] == "Strict", session

    driver.find_element(By.LINK_TEXT, "example").click()
    count = lambda which: driver.find_element(By.CSS_SELECTOR, f"#{which} b").text
    wait_for("13 members", lambda: count("members") == "13", 10)
    assert count("leaders") == "3", count("leaders")
    assert count("managers") == "1", count("managers")
    rows = driver.find_elements(By.CSS_SELECTOR, "#member-table tbody tr")
    assert len(rows) == 13, len(rows)
    roles = [r.find_element(By.CSS_SELECTOR, "td.role").text for r in rows]
    assert roles.count("leader") == 3 and roles.count("manager") == 1, roles
    assert "anchor" in rows[1].text, rows[1].text
    # Wait until the event stream is open (its first message has replaced
    # the live part), then mark the page: a reload would lose the mark.
    wait_for("the event stream", lambda: driver.execute_script(
        "return document.querySelector('#live') && document.querySelector('#live')['htmx-internal-data'] "
        "&& document.querySelector('#live')['htmx-internal-data'].sseEventSource "
        "&& document.querySelector('#live')['htmx-internal-data'].sseEventSource.readyState === 1"), 10)
    driver.execute_script("window.__noReload = 'still here'")
    driver.save_screenshot(os.path.join(work, "cluster.png"))
    if copy_to:
        driver.save_screenshot(copy_to)

    cli("cluster", "role", "example", "member-05", "leader")
    changed = time.monotonic()
    wait_for("4 leaders", lambda: count("leaders") == "4", 1.0)
    took = time.monotonic() - changed
    assert driver.execute_script("return window.__noReload") == "still here", "the page reloaded"
    print(f"role change seen by the page {took * 1000:.0f} ms after the CLI returned, no reload")

    # The machine list: escaping, then a bad filter with its caret.
    driver.get(url + "/ui/machines")
    wait_for("the machine list", lambda: driver.find_element(By.ID, "total").text == "14", 10)
    names = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#machine-table td.name")]
    assert "<script>alert(1)</script>" in names, names
    assert driver.execute_script("return document.querySelectorAll('main script').length") == 0
    box = driver.find_element(By.NAME, "filter")
    box.clear()
    box.send_keys("Name Eqq member-01\n")
    err = wait_for("the filter error", lambda: driver.find_element(By.ID, "filter-error"), 10)
    caret = err.find_element(By.CSS_SELECTOR, "pre.caret").text.split("\n")
    assert caret[0] == "Name Eqq member-01", caret
    assert caret[1].index("^") == 5, caret
    assert "unknown operator" in err.text, err.text
    driver.save_screenshot(os.path.join(work, "filter-error.png"))
    box = driver.find_element(By.NAME, "filter")
    box.clear()
    box.send_keys("cluster/leader Eq true\n")
    wait_for("4 leaders listed", lambda: driver.find_element(By.ID, "total").text == "4", 10)
    print("browser: login, live cluster page, escaping and the filter caret: ok")
finally:
    driver.quit()
