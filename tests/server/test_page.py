"""The web page as a product, in headless Chromium: build a pipeline from the
palette without typing JSON, see the server's diagnostics on the node they
name, fix it, run it; a 100-node graph laid out without overlaps; the
server-wide view showing another client's run. Each step takes a screenshot:
into docs/screenshots/ (docs/web-page.md shows them) when
PLUMBER_UPDATE_SCREENSHOTS=1, so they stay true; else into a scratch directory,
so that a test run leaves the checkout as it was."""
import asyncio
import json
import os
import shutil
import tempfile
import threading
import unittest

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from harness import GUARD, SOURCE, UPPER, Server, connect, graph, main, recv_until, send, submit
from test_browser import chromium

TOKEN = "page-token"
if os.environ.get("PLUMBER_UPDATE_SCREENSHOTS") == "1":
    SHOTS = os.path.join(SOURCE, "docs", "screenshots")
else:
    SHOTS = tempfile.mkdtemp(prefix="plumber-screenshots-")


def hundred_nodes():
    """One source, eleven chains of different lengths (long edges to route), one zip: 100 nodes."""
    steps = ["upper", "lower", "reverse", "identity"]
    nodes = [("src", "values", {"values": ["plumber", "asio", "beast"]})]
    edges, ends = [], []
    for chain in range(11):
        length = 8 if chain == 10 else 9
        previous = "src"
        for i in range(length):
            node = f"c{chain:02d}_{i}"
            nodes.append((node, steps[(chain + i) % len(steps)]))
            edges.append((previous, node))
            previous = node
        ends.append(previous)
    nodes.append(("out", "concat", {"separator": "|"}, {"join": "zip"}))
    edges += [(end, "out") for end in ends]
    doc = graph(*nodes, edges=edges, name="hundred")
    assert len(doc["nodes"]) == 100
    return doc


class Page(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.graphs = tempfile.mkdtemp(prefix="plumber-page-")
        with open(os.path.join(cls.graphs, "upper.json"), "w") as f:
            json.dump(UPPER, f)
        os.makedirs(SHOTS, exist_ok=True)
        cls.server = Server("--token", TOKEN, "--allow-edits", graphs=cls.graphs).start()
        cls.driver, cls.profile = chromium()

    @classmethod
    def tearDownClass(cls):
        cls.driver.quit()
        shutil.rmtree(cls.profile, ignore_errors=True)
        shutil.rmtree(cls.graphs, ignore_errors=True)
        if not SHOTS.startswith(SOURCE):
            shutil.rmtree(SHOTS, ignore_errors=True)
        assert cls.server.stop() == 0, cls.server.stderr.decode(errors="replace")

    def wait(self, condition, guard=GUARD):
        # The page redraws what changed: an element found a moment ago may be gone.
        return WebDriverWait(self.driver, guard, ignored_exceptions=[StaleElementReferenceException]).until(condition)

    def shot(self, name):
        self.driver.save_screenshot(os.path.join(SHOTS, name + ".png"))

    def css(self, selector):
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def open_page(self):
        self.driver.get(f"http://127.0.0.1:{self.server.port}/?token={TOKEN}")
        self.wait(EC.text_to_be_present_in_element((By.ID, "connection"), "connected"))
        self.wait(lambda d: self.css('.palette-item[data-coroutine="values"]'))

    def node(self, node_id):
        return self.driver.find_element(By.CSS_SELECTOR, f'#graph-view g.node[data-node="{node_id}"]')

    def connect_nodes(self, a, b):
        port = self.node(a).find_element(By.CSS_SELECTOR, "circle.port.out")
        target = self.node(b).find_element(By.CSS_SELECTOR, "rect.box")
        ActionChains(self.driver).click_and_hold(port).move_to_element(target).release().perform()

    def invalid_nodes(self):
        return sorted(g.get_attribute("data-node") for g in self.css("#graph-view g.node.invalid"))

    def set_text(self, document):
        self.driver.execute_script(
            "const t = document.getElementById('graph-text'); t.value = arguments[0];"
            "t.dispatchEvent(new Event('input'));", json.dumps(document, indent=2))

    def test_1_build_a_pipeline_from_the_palette_fix_it_and_run_it(self):
        self.open_page()
        self.shot("01-palette")
        # Three nodes from the palette, two edges by dragging: no JSON typed.
        for coroutine in ["values", "upper", "identity"]:
            self.css(f'.palette-item[data-coroutine="{coroutine}"]')[0].click()
        self.wait(lambda d: len(self.css("#graph-view g.node")) == 3)
        self.connect_nodes("values", "upper")
        self.wait(lambda d: len(self.css("#graph-view path.edge")) == 1)
        self.connect_nodes("upper", "identity")
        self.wait(lambda d: len(self.css("#graph-view path.edge")) == 2)
        # The drawing is in the JSON view.
        text = json.loads(self.driver.find_element(By.ID, "graph-text").get_attribute("value"))
        self.assertEqual([(e["from"], e["to"]) for e in text["edges"]], [("values", "upper"), ("upper", "identity")])
        # The server's diagnostic lands on the node it names, and only there:
        # `values` needs its `values` param.
        self.wait(lambda d: self.invalid_nodes() == ["values"])
        self.assertTrue(self.node("values").find_element(By.CSS_SELECTOR, ".diag").text.startswith("⚠"))
        title = self.node("values").find_element(By.CSS_SELECTOR, "title").get_attribute("textContent")
        self.assertIn("/nodes/0/params", title)
        self.assertIn("/nodes/0/params", self.driver.find_element(By.ID, "errors").text)
        self.assertIn("1 problem", self.driver.find_element(By.ID, "validity").text)
        # ... and on the field of the form that fixes it.
        self.node("values").click()
        self.wait(lambda d: "invalid" in d.find_element(
            By.CSS_SELECTOR, '#node-form label[data-field="params/values"]').get_attribute("class"))
        self.shot("02-validation-error")
        self.driver.find_element(By.ID, "param-values").send_keys('["plumber", "page"]', Keys.TAB)
        self.wait(EC.text_to_be_present_in_element((By.ID, "validity"), "valid"))
        self.assertEqual(self.invalid_nodes(), [])
        self.assertEqual(json.loads(self.driver.find_element(By.ID, "graph-text").get_attribute("value"))
                         ["nodes"][0]["params"], {"values": ["plumber", "page"]})
        self.shot("03-fixed")
        self.driver.find_element(By.ID, "run-button").click()
        self.wait(EC.text_to_be_present_in_element((By.ID, "status"), "completed"))
        self.assertIn("2 outputs", self.driver.find_element(By.ID, "status").text)
        # The status changes at once; lines are drawn at the next animation
        # frame, in order: the run's last line comes after its outputs.
        self.wait(lambda d: any("completed" in li.text for li in self.css("#outputs li.note")))
        outputs = [li.text for li in self.css("#outputs li.output")]
        self.assertEqual(len(outputs), 2, outputs)
        self.assertTrue(any('"PLUMBER"' in o for o in outputs), outputs)
        self.assertTrue(any('"PAGE"' in o for o in outputs), outputs)
        self.assertEqual(self.node("identity").find_element(By.CSS_SELECTOR, ".counters").text, "in 2 · out 2")
        self.shot("04-run")
        # The JSON view drives the drawing too.
        text = json.loads(self.driver.find_element(By.ID, "graph-text").get_attribute("value"))
        text["nodes"].append({"id": "low", "coroutine": "lower"})
        text["edges"].append({"from": "upper", "to": "low"})
        self.set_text(text)
        self.wait(lambda d: len(self.css("#graph-view g.node")) == 4)
        self.assertEqual(len(self.css('#graph-view path.edge[data-to="low"]')), 1)
        # A palette entry dropped onto a node adds a node connected after it.
        self.driver.execute_script(
            "const data = new DataTransfer(); data.setData('application/x-plumber-coroutine', 'reverse');"
            "const target = document.querySelector('#graph-view g.node[data-node=\"low\"] rect.box');"
            "target.dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));")
        self.wait(lambda d: len(self.css("#graph-view g.node")) == 5)
        self.assertEqual(len(self.css('#graph-view path.edge[data-from="low"][data-to="reverse"]')), 1)
        # Saved to the server's catalog (--allow-edits).
        name = self.driver.find_element(By.ID, "save-name")
        name.send_keys("built")
        self.driver.find_element(By.ID, "save-button").click()
        self.wait(EC.text_to_be_present_in_element((By.ID, "save-status"), "saved"))
        with open(os.path.join(self.graphs, "built.json")) as f:
            self.assertEqual(len(json.load(f)["nodes"]), 5)
        self.wait(lambda d: d.find_elements(By.CSS_SELECTOR, '#graph-select option[value="built"]'))

    def test_2_a_hundred_nodes_lay_out_without_overlaps(self):
        self.open_page()
        self.set_text(hundred_nodes())
        self.wait(lambda d: len(self.css("#graph-view g.node")) == 100)
        self.wait(EC.text_to_be_present_in_element((By.ID, "validity"), "valid"))
        boxes = self.driver.execute_script(
            "return [...document.querySelectorAll('#graph-view g.node rect.box')].map((r) => {"
            "const b = r.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; });")
        self.assertEqual(len(boxes), 100)
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                overlap = a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
                self.assertFalse(overlap, f"boxes overlap: {a} {b}")
        # Readable: the view does not shrink the text below ~7 px (it pans instead).
        height = self.driver.execute_script(
            "return document.querySelector('#graph-view g.node text.id').getBoundingClientRect().height;")
        self.assertGreaterEqual(height, 7)
        self.shot("05-hundred-nodes")
        self.driver.find_element(By.ID, "run-button").click()
        self.wait(EC.text_to_be_present_in_element((By.ID, "status"), "completed"))
        counters = self.node("out").find_element(By.CSS_SELECTOR, ".counters")  # may be out of sight
        self.assertEqual(counters.get_attribute("textContent"), "in 33 · out 3")
        self.shot("06-hundred-nodes-run")

    def test_3_the_server_view_shows_another_clients_run(self):
        self.open_page()
        self.driver.find_element(By.ID, "server-tab").click()
        # The shared /v1 pipeline of the catalog's `upper` graph.
        self.wait(lambda d: self.css('#watch-services .watch-service[data-name="upper"]'))
        started, release = threading.Event(), threading.Event()
        result = {}

        async def other_client():
            async with connect(self.server, f"/ws?token={TOKEN}") as ws:
                accepted = await submit(ws, graph=graph(("in", "input"), ("up", "upper"), edges=[("in", "up")],
                                                        name="elsewhere"), ref=1)
                await send(ws, {"op": "input", "run": accepted["run"], "values": ["x", "y", "z"]})
                await recv_until(ws, "output")
                started.set()
                await asyncio.get_running_loop().run_in_executor(None, release.wait, GUARD)
                await send(ws, {"op": "end", "run": accepted["run"]})
                result["frames"] = await recv_until(ws, "done", run=accepted["run"])

        thread = threading.Thread(target=lambda: asyncio.run(other_client()))
        thread.start()
        try:
            self.assertTrue(started.wait(GUARD))
            # The view is redrawn at each watch frame: read it in one script, not element by element.
            seen = self.wait(lambda d: d.execute_script(
                "const box = document.querySelector('#watch-runs .watch-run[data-graph=\"inline:elsewhere\"]');"
                "if (!box) return null;"
                "const row = box.querySelector('tr[data-node=\"up\"]');"
                "const cells = row ? [...row.querySelectorAll('td')].map((td) => td.textContent) : [];"
                "return cells[2] === '3' && cells[3] === '3' ? box.querySelector('h3').textContent : null;"))
            self.assertIn("run 1: inline:elsewhere", seen)
            self.shot("07-server-view")
        finally:
            release.set()
            thread.join(GUARD)
        self.assertEqual(result["frames"][-1]["status"], "completed")
        self.wait(lambda d: not self.css('#watch-runs .watch-run[data-graph="inline:elsewhere"]'))


if __name__ == "__main__":
    main()
