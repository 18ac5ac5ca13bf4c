"""The web page in headless Chromium (chromium-driver + python3-selenium): it
loads /, submits a bundled graph, draws it, and shows the outputs live."""
import json
import os
import shutil
import tempfile
import unittest

from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from harness import GUARD, Server, main
from test_large_runs import LARGE_GUARD, REPEATS, SINKS, VALUES, large_graph


def chromium():
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1000", "--no-first-run", "--disable-extensions"]:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="plumber-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=DriverService(shutil.which("chromedriver") or
                                                    "/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(GUARD)
    return driver, profile


class Browser(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server("--token", "browser-token").start()
        cls.driver, cls.profile = chromium()

    @classmethod
    def tearDownClass(cls):
        cls.driver.quit()
        shutil.rmtree(cls.profile, ignore_errors=True)
        assert cls.server.stop() == 0, cls.server.stderr.decode(errors="replace")

    def wait(self, condition, guard=GUARD):
        return WebDriverWait(self.driver, guard).until(condition)

    def open_page(self):
        self.driver.get(f"http://127.0.0.1:{self.server.port}/?token=browser-token")
        self.wait(EC.text_to_be_present_in_element((By.ID, "connection"), "connected"))
        self.wait(lambda d: len(Select(d.find_element(By.ID, "graph-select")).options) > 1)

    def test_pick_a_bundled_graph_and_see_its_outputs(self):
        self.open_page()
        Select(self.driver.find_element(By.ID, "graph-select")).select_by_value("strings")
        self.wait(lambda d: '"strings"' in d.find_element(By.ID, "graph-text").get_attribute("value"))
        self.driver.find_element(By.ID, "run-button").click()
        # Drawn from the topological order: one box per node, one path per edge.
        self.wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#graph-view g.node")) == 5)
        self.assertEqual(len(self.driver.find_elements(By.CSS_SELECTOR, "#graph-view path[marker-end]")), 5)
        self.wait(EC.text_to_be_present_in_element((By.ID, "status"), "completed"))
        self.assertIn("5 outputs, 0 failed", self.driver.find_element(By.ID, "status").text)
        # The page draws output lines once per animation frame, which may come
        # after the status line (it did under TSan): wait for them.
        self.wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#outputs li.output")) >= 5)
        outputs = [li.text for li in self.driver.find_elements(By.CSS_SELECTOR, "#outputs li.output")]
        self.assertEqual(len(outputs), 5)
        self.assertTrue(any("REBMULP / rebmulp" in text for text in outputs), outputs)
        counters = '#graph-view g.node[data-node="out"] .counters'
        self.wait(EC.text_to_be_present_in_element((By.CSS_SELECTOR, counters), "in 10"))
        self.assertEqual(self.driver.find_element(By.CSS_SELECTOR, counters).text, "in 10 · out 5")

    def test_send_inputs_by_hand(self):
        self.open_page()
        Select(self.driver.find_element(By.ID, "graph-select")).select_by_value("upper_input")
        self.wait(lambda d: '"upper_input"' in d.find_element(By.ID, "graph-text").get_attribute("value"))
        self.driver.find_element(By.ID, "run-button").click()
        self.wait(EC.element_to_be_clickable((By.ID, "send-button")))
        box = self.driver.find_element(By.ID, "input-value")
        box.clear()
        box.send_keys('"hello browser"')
        self.driver.find_element(By.ID, "send-button").click()
        self.wait(EC.text_to_be_present_in_element((By.ID, "outputs"), '"HELLO BROWSER"'))
        box.clear()
        box.send_keys("42")
        self.driver.find_element(By.ID, "send-button").click()
        self.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#outputs li.failed"))
        self.driver.find_element(By.ID, "end-button").click()
        self.wait(EC.text_to_be_present_in_element((By.ID, "status"), "completed"))
        self.assertIn("1 outputs, 1 failed", self.driver.find_element(By.ID, "status").text)

    def test_a_large_fan_out_run_completes_with_every_output(self):
        # 20,000 values x 14 steps x 6 sinks, REPEATS times: every output reaches the
        # page, then "done" (the run used to lose its last outputs and hang).
        self.open_page()
        text = json.dumps(large_graph())
        for run in range(1, REPEATS + 1):
            self.driver.execute_script(
                "const t = document.getElementById('graph-text'); t.value = arguments[0];"
                "t.dispatchEvent(new Event('input'));", text)
            self.wait(EC.element_to_be_clickable((By.ID, "run-button")))
            self.driver.find_element(By.ID, "run-button").click()
            self.wait(EC.text_to_be_present_in_element((By.ID, "status"), f"run {run} completed"),
                      LARGE_GUARD)
            status = self.driver.find_element(By.ID, "status").text
            self.assertIn(f"{VALUES * SINKS} outputs, 0 failed", status)
            self.wait(EC.text_to_be_present_in_element((By.ID, "output-count"),
                                                       f"({VALUES * SINKS})"))
            self.assertEqual(self.driver.find_element(By.ID, "connection").text, "connected")

    def test_a_pasted_graph_with_an_error_shows_its_diagnostic(self):
        self.open_page()
        text = self.driver.find_element(By.ID, "graph-text")
        text.clear()
        text.send_keys('{"plumber": 1, "nodes": [{"id": "a", "coroutine": "revers"}], "edges": []}')
        self.driver.find_element(By.ID, "run-button").click()
        self.wait(EC.text_to_be_present_in_element((By.ID, "errors"), "graph.unknown_coroutine"))
        self.assertIn('did you mean "reverse"', self.driver.find_element(By.ID, "errors").text)


if __name__ == "__main__":
    main()
