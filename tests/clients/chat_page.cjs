// The chat page in headless Chromium, driven by playwright-core:
// ask a fixture question and watch the answer stream, open a citation,
// rate the answer (thumbs down with a comment), see the "not in the
// documents" state, upload a document and ask about it, and ask a question
// whose source has a web address: its citation links there.
//
//   node chat_page.cjs BASE_URL SCREENSHOT.png LINKED_QUESTION URL_PREFIX
// with RAG_CLIENT_NODE_MODULES naming the node_modules holding
// playwright-core (scripts/client-env.sh). Prints one JSON line; exits
// non-zero on the first failed check.
const path = require("path");
const { chromium } = require(path.join(process.env.RAG_CLIENT_NODE_MODULES, "playwright-core"));

const [base, screenshot, linkedQuestion, urlPrefix] = process.argv.slice(2);
const check = (ok, what) => { if (!ok) throw new Error("check failed: " + what); };

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const result = {};
  try {
    const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
    page.on("console", (m) => { if (m.type() === "error") console.error("page: " + m.text()); });
    page.on("pageerror", (e) => console.error("page error: " + e.message));
    const external = [];
    page.on("request", (r) => { if (!r.url().startsWith(base)) external.push(r.url()); });
    await page.goto(base + "/");
    check((await page.title()) === "Ask the documents", "page title");

    // A fixture question: the answer streams in, then gets its citations.
    // The stream carries checked sentences only, each once it has passed,
    // so a one-sentence answer may show whole just before the final chunk:
    // what shows it streamed is the response the page reads.
    const streamed = page.waitForResponse((r) => r.url().endsWith("/v1/chat/completions"), { timeout: 60000 });
    await page.fill("#question", "Which password manager does the company use?");
    await page.press("#question", "Enter");
    result.streamed = ((await streamed).headers()["content-type"] || "").startsWith("text/event-stream");
    const answer = page.locator(".turn.assistant").first();
    await page.waitForSelector(".turn.assistant:not(.pending) .cite", { timeout: 120000 });
    result.answer = (await answer.innerText()).split("\n")[0];
    check(!(await answer.locator(".not-covered").count()), "the fixture question is answered");

    // Open the citation: the quoted passage with its title and source.
    await answer.locator(".sources .cite").first().click();
    await page.waitForSelector("#passage:not([hidden])");
    result.passage_title = await page.innerText("#passage-title");
    result.passage_where = await page.innerText("#passage-where");
    check(result.passage_where.includes("it/passwords-and-2fa.md"), "citation opens its passage: " + result.passage_where);
    check((await page.innerText("#passage-quote")).length > 20, "the quoted passage is shown");
    check(await page.locator("#passage-link").isHidden(), "no link for a document without a web address");

    // The thumbs are an icon (inline SVG, not an emoji a font may lack)
    // with a text label.
    result.thumbs = await answer.locator(".feedback .rate").allInnerTexts();
    check(JSON.stringify(result.thumbs) === JSON.stringify(["Helpful", "Not helpful"]), "thumbs labelled: " + result.thumbs);
    check(await answer.locator(".feedback .rate svg").count() === 2, "thumbs drawn as SVG");

    // Rate it: thumbs down with a comment goes to POST /v1/feedback.
    const rated = page.waitForResponse((r) => r.url().endsWith("/v1/feedback"), { timeout: 30000 });
    await answer.locator(".feedback textarea").fill("It should say where the vault is.");
    await answer.locator(".feedback .rate.down").click();
    result.feedback_status = (await rated).status();
    await page.waitForSelector(".feedback-status[data-state]", { timeout: 30000 });
    result.feedback = await answer.locator(".feedback-status").innerText();
    check(result.feedback.startsWith("Thanks"), "feedback sent: " + result.feedback);

    // Not in the documents: a visible state, not an invented answer.
    await page.fill("#question", "What is the boiling point of tungsten?");
    await page.press("#question", "Enter");
    await page.waitForSelector(".turn.assistant:nth-of-type(4):not(.pending)", { timeout: 120000 });
    check(await page.locator(".turn.assistant").nth(1).locator(".not-covered").count() === 1, "not-covered badge");

    // Upload a document, follow the job, ask about it.
    await page.setInputFiles("#files", {
      name: "forklift-rules.md",
      mimeType: "text/markdown",
      buffer: Buffer.from("---\ntitle: Forklift rules\n---\n# Forklift rules\n\nOnly staff with a valid forklift licence may drive a forklift in the Zeta warehouse. The speed limit for forklifts in the Zeta warehouse is 8 km/h.\n"),
    });
    await page.click("#upload button[type=submit]");
    await page.waitForSelector("#job-status[data-state]", { timeout: 60000 });
    result.job = await page.innerText("#job-status");
    check(result.job.startsWith("Done: 1 added"), "upload job: " + result.job);
    await page.fill("#question", "What is the speed limit for forklifts in the Zeta warehouse?");
    await page.press("#question", "Enter");
    await page.waitForSelector(".turn.assistant:nth-of-type(6):not(.pending)", { timeout: 120000 });
    const third = page.locator(".turn.assistant").nth(2);
    result.upload_answer = (await third.innerText()).split("\n")[0];
    const sources = await third.locator(".sources").innerText();
    check(sources.includes("Forklift rules"), "the answer cites the uploaded document: " + sources);

    // A document synced from a source has a web address: its citation links to it.
    await page.fill("#question", linkedQuestion);
    await page.press("#question", "Enter");
    await page.waitForSelector(".turn.assistant:nth-of-type(8):not(.pending)", { timeout: 120000 });
    const fourth = page.locator(".turn.assistant").nth(3);
    const links = await fourth.locator(".sources a.source-link").evaluateAll((as) => as.map((a) => a.href));
    result.links = links;
    check(links.some((h) => h.startsWith(urlPrefix)), "the citation links to its page: " + links.join(", "));
    await fourth.locator(".sources .cite").first().click();
    const href = await page.getAttribute("#passage-link", "href");
    check(href && href.startsWith(urlPrefix) && await page.locator("#passage-link").isVisible(), "the passage links to its page: " + href);

    check(external.length === 0, "no request leaves the server: " + external.join(", "));
    await page.screenshot({ path: screenshot, fullPage: true });
    result.screenshot = screenshot;
    console.log(JSON.stringify(result));
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e.stack || String(e)); process.exit(1); });
