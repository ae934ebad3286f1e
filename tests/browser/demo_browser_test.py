#!/usr/bin/python3
"""The demo web application (examples/demo) driven in a real headless Chromium.

Chromium (Debian's `chromium`) is driven through its DevTools protocol over a WebSocket
(Debian's `python3-websocket`); nothing is downloaded. Two browser contexts are two devices with
separate cookie jars. The test:
  1. logs in on device A, checks the cookie's attributes (HttpOnly, SameSite=Lax, Path=/);
  2. restarts the server (same SQLite file, same port): A is still logged in;
  3. a POST without the CSRF token is refused (403), and A is still logged in;
  4. "Rotate my token" gives A a new cookie and keeps it logged in;
  5. logs in on device B (another User-Agent), A's devices page lists both, A signs B out;
  6. B's next request finds it logged out.
Screenshots of each step are saved in --artifacts. Everything runs on 127.0.0.1, and the whole
test is bounded (--timeout, 120 s by default).

Exit status: 0 passed, 1 failed, 77 skipped (no Chromium and CI unset; with CI set it fails).
"""

import argparse
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

CHROMIUM_CANDIDATES = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
FIREFOX_UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 "
              "Firefox/128.0")


class Failed(Exception):
    pass


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        left = self.end - time.monotonic()
        if left <= 0:
            raise Failed("the test ran out of time")
        return left


def step(text):
    print("==> " + text, flush=True)


class Demo:
    """The demo server, started and stopped by the test."""

    def __init__(self, binary, workdir, deadline):
        self.binary = os.path.abspath(binary)
        self.workdir = workdir
        self.deadline = deadline
        self.process = None
        self.port = 0
        self.log = open(os.path.join(workdir, "demo.log"), "a", encoding="utf-8")

    def start(self):
        db = "sqlite://" + os.path.join(self.workdir, "sessions.db")
        self.process = subprocess.Popen(
            [self.binary, "--host", "127.0.0.1", "--port", str(self.port), "--db", db],
            cwd=self.workdir, stdout=subprocess.PIPE, stderr=self.log, text=True)
        while True:
            self.deadline.left()
            line = self.process.stdout.readline()
            if not line:
                raise Failed("the demo exited before listening (see demo.log)")
            self.log.write(line)
            self.log.flush()
            match = re.search(r"https?://127\.0\.0\.1:(\d+)/", line)
            if match:
                self.port = int(match.group(1))
                return

    def stop(self):
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            rest, _ = self.process.communicate(timeout=10)
            self.log.write(rest or "")
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise Failed("the demo did not stop within 10 s of SIGTERM")
        if self.process.returncode != 0:
            raise Failed("the demo exited with status %d" % self.process.returncode)
        self.process = None

    def url(self, path="/"):
        return "http://127.0.0.1:%d%s" % (self.port, path)


class Browser:
    """Headless Chromium and one DevTools connection to it (browser-level, flattened sessions)."""

    def __init__(self, binary, workdir, deadline):
        import websocket  # python3-websocket

        self.deadline = deadline
        self.profile = tempfile.mkdtemp(prefix="chromium-", dir=workdir)
        self.log = open(os.path.join(workdir, "chromium.log"), "w", encoding="utf-8")
        self.process = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--disable-sync",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             "--remote-allow-origins=*", "--user-data-dir=" + self.profile, "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        endpoint = None
        while endpoint is None:
            deadline.left()
            line = self.process.stderr.readline()
            if not line:
                raise Failed("Chromium exited before opening DevTools (see chromium.log)")
            self.log.write(line)
            match = re.search(r"DevTools listening on (ws://\S+)", line)
            if match:
                endpoint = match.group(1)
        self.log.flush()
        self.ws = websocket.create_connection(endpoint, timeout=30, suppress_origin=True)
        self.next_id = 0

    def call(self, method, session=None, **params):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:
            self.ws.settimeout(max(0.1, min(30, self.deadline.left())))
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise Failed("%s: %s" % (method, reply["error"]))
                return reply.get("result", {})

    def new_device(self, user_agent=None):
        context = self.call("Target.createBrowserContext")["browserContextId"]
        target = self.call("Target.createTarget", url="about:blank",
                           browserContextId=context)["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session)
        self.call("Emulation.setDeviceMetricsOverride", session, width=1000, height=640,
                  deviceScaleFactor=1, mobile=False)
        if user_agent:
            self.call("Emulation.setUserAgentOverride", session, userAgent=user_agent)
        return Device(self, context, session)

    def close(self):
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001 - closing what may already be gone
            pass
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


class Device:
    """One browser context (its own cookies) with one page."""

    def __init__(self, browser, context, session):
        self.browser = browser
        self.context = context
        self.session = session

    def evaluate(self, expression, await_promise=False):
        result = self.browser.call("Runtime.evaluate", self.session, expression=expression,
                                   returnByValue=True, awaitPromise=await_promise)
        if "exceptionDetails" in result:
            raise Failed("script failed: %s" % result["exceptionDetails"].get("text"))
        return result["result"].get("value")

    def wait_for(self, predicate, what, seconds=15):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.browser.deadline.left()
            try:
                if self.evaluate("Boolean(document.readyState === 'complete' && (%s))"
                                 % predicate):
                    return
            except Failed:
                pass  # a navigation replaced the page mid-call
            time.sleep(0.1)
        raise Failed("timed out waiting for " + what + "; page text: "
                     + str(self.evaluate("document.body ? document.body.innerText : ''"))[:300])

    def goto(self, url):
        self.browser.call("Page.navigate", self.session, url=url)
        self.wait_for("location.href === %s" % json.dumps(url), "the page " + url)

    def click(self, selector):
        if not self.evaluate("(() => { const e = document.querySelector(%s); if (!e) return "
                             "false; e.click(); return true; })()" % json.dumps(selector)):
            raise Failed("nothing to click at " + selector)

    def text(self):
        return self.evaluate("document.body.innerText")

    def cookies(self):
        return {c["name"]: c for c in self.browser.call(
            "Storage.getCookies", browserContextId=self.context)["cookies"]}

    def screenshot(self, path):
        data = self.browser.call("Page.captureScreenshot", self.session, format="png")["data"]
        with open(path, "wb") as out:
            out.write(base64.b64decode(data))
        print("    screenshot: " + path, flush=True)

    def login(self, demo, user):
        self.goto(demo.url("/"))
        self.wait_for("document.getElementById('login')", "the login form")
        self.evaluate("document.getElementById('user').value = %s; "
                      "document.getElementById('password').value = 'pylon'; true"
                      % json.dumps(user))
        self.click("#login")
        self.logged_in_as(user)

    def logged_in_as(self, user):
        self.wait_for("(document.querySelector('span#user') || {}).textContent === %s"
                      % json.dumps(user), "the account page of " + user)


def expect(condition, text):
    if not condition:
        raise Failed(text)
    print("    ok: " + text, flush=True)


def run(args):
    deadline = Deadline(args.timeout)
    os.makedirs(args.artifacts, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="pylon-browser-")
    demo = Demo(args.demo, workdir, deadline)
    browser = None
    try:
        step("start the demo")
        demo.start()
        step("start headless Chromium")
        browser = Browser(args.chromium, workdir, deadline)
        shot = lambda device, name: device.screenshot(os.path.join(args.artifacts, name))

        step("device A logs in")
        a = browser.new_device()
        a.goto(demo.url("/"))
        a.wait_for("document.getElementById('login')", "the login form")
        shot(a, "01-login.png")
        a.login(demo, "alice")
        shot(a, "02-logged-in.png")
        cookie = a.cookies().get("pylon_session")
        expect(cookie is not None and re.fullmatch(r"pylon_[0-9a-f]{64}", cookie["value"]),
               "a session cookie holding a token")
        expect(cookie["httpOnly"] and cookie.get("sameSite") == "Lax" and cookie["path"] == "/"
               and not cookie["secure"], "the cookie is HttpOnly, SameSite=Lax, Path=/ "
               "(and not Secure over plain HTTP)")

        step("restart the server")
        demo.stop()
        demo.start()
        a.goto(demo.url("/"))
        a.logged_in_as("alice")
        expect(True, "device A is still logged in after the restart")
        shot(a, "03-after-restart.png")

        step("a form posted without its CSRF token is refused")
        a.evaluate("(() => { const f = document.createElement('form'); f.method = 'post'; "
                   "f.action = '/logout'; const i = document.createElement('input'); "
                   "i.name = 'csrf'; i.value = 'forged'; f.appendChild(i); "
                   "document.body.appendChild(f); f.submit(); return true; })()")
        a.wait_for("document.title.startsWith('Refused')", "the refusal page")
        expect("CSRF" in a.text(), "POST /logout with a wrong CSRF token is refused (403)")
        a.goto(demo.url("/"))
        a.logged_in_as("alice")
        expect(True, "device A is still logged in")

        step("rotate the token")
        before = a.cookies()["pylon_session"]["value"]
        a.click("#rotate")
        a.wait_for("document.getElementById('message')", "the rotation message")
        a.logged_in_as("alice")
        after = a.cookies()["pylon_session"]["value"]
        expect(after != before, "a new token in the cookie, still logged in")

        step("device B (another browser) logs in as the same user")
        b = browser.new_device(user_agent=FIREFOX_UA)
        b.login(demo, "alice")
        shot(b, "04-device-b.png")

        step("device A signs device B out")
        a.goto(demo.url("/devices"))
        a.wait_for("document.querySelectorAll('#devices tr.this, #devices tr.other').length === 2",
                   "two devices listed")
        expect("Firefox on Windows" in a.text() and "Headless Chrome on Linux" in a.text(),
               "the devices page names both devices from their User-Agent")
        shot(a, "05-devices.png")
        a.click("#devices tr.other button.revoke")
        a.wait_for("document.querySelectorAll('#devices tr.other').length === 0",
                   "device B gone from the list")
        shot(a, "06-signed-out-b.png")

        step("device B's next request")
        b.goto(demo.url("/"))
        b.wait_for("document.getElementById('login')", "the login form on device B")
        expect(not b.evaluate("Boolean(document.querySelector('span#user'))") and
               "You were signed out" in b.text(), "device B is logged out")
        shot(b, "07-device-b-logged-out.png")
        a.goto(demo.url("/"))
        a.logged_in_as("alice")
        expect(True, "device A is still logged in")
        return 0
    finally:
        if browser is not None:
            browser.close()
        try:
            demo.stop()
        except Failed as error:
            print("demo: " + str(error), file=sys.stderr)
        for name in ("demo.log", "chromium.log"):
            path = os.path.join(workdir, name)
            if os.path.exists(path):
                shutil.copy(path, os.path.join(args.artifacts, name))
        shutil.rmtree(workdir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", required=True, help="the pylon_demo binary")
    parser.add_argument("--artifacts", required=True, help="where screenshots and logs go")
    parser.add_argument("--chromium", default=next(
        (c for c in CHROMIUM_CANDIDATES if os.path.exists(c)), None))
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    in_ci = bool(os.environ.get("CI"))
    missing = []
    if args.chromium is None:
        missing.append("chromium (Debian package chromium)")
    try:
        import websocket  # noqa: F401
    except ImportError:
        missing.append("the websocket module (Debian package python3-websocket)")
    if missing:
        print("demo_browser_test: missing " + ", ".join(missing) +
              "; scripts/install-deps.sh installs them", file=sys.stderr)
        return 1 if in_ci else 77
    try:
        status = run(args)
    except Failed as error:
        print("FAILED: " + str(error), file=sys.stderr)
        print("artifacts (screenshots, demo.log, chromium.log): " + args.artifacts,
              file=sys.stderr)
        return 1
    print("demo_browser_test: passed; screenshots in " + args.artifacts)
    return status


if __name__ == "__main__":
    sys.exit(main())
