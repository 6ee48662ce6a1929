// How docs/vibi_epoch_grids.png was taken (docs/vibi.md, "Watching the explanations form"): a
// train_l2x / train_vibi run's explanation grids in MLflow's UI, in headless Chromium. Top: the
// run page's Model metrics tab, its `explanations` image card set to each logged step in turn
// (MLflow shows a 256-pixel thumbnail there); bottom: the Artifacts tab showing the last grid at
// full size. The screenshots are laid out on one page and that page is the output.
//   NODE_PATH=<folder with playwright-core> node docs/grids_screenshot.js http://127.0.0.1:5055 \
//     EXPERIMENT_ID RUN_ID OUT.png
// Needs Node, the playwright-core package and a Chromium (CHROMIUM, default /usr/bin/chromium).
const { chromium } = require('playwright-core');

async function closeAssistant(page) {
  // MLflow 3.17's assistant side panel opens by default and takes a third of the width
  for (const b of await page.locator('button[aria-label*="lose"]').all()) {
    await b.click({ timeout: 2000 }).catch(() => {});
  }
}

(async () => {
  const [base, experiment, run, out] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = await (await browser.newContext({ viewport: { width: 1400, height: 900 } })).newPage();
  const runPage = `${base}/#/experiments/${experiment}/runs/${run}`;

  // the logged steps, from the run's images/ artifacts (names: <key>+step+<step>+timestamp+...)
  const listing = await (await page.request.get(
    `${base}/ajax-api/2.0/mlflow/artifacts/list?run_uuid=${run}&path=images`)).json();
  const files = listing.files.map((f) => f.path).filter((p) => p.endsWith('.png'));
  const stepOf = (p) => Number(p.split('+step+')[1].split('+')[0]);
  const steps = files.map(stepOf).sort((a, b) => a - b);

  await page.goto(`${runPage}/model-metrics?workflowType=machine_learning`);
  await page.waitForTimeout(5000);
  await closeAssistant(page);
  await page.getByPlaceholder('Search metric charts').fill('explanations');
  await page.waitForTimeout(3000);
  const card = page.locator('[data-testid="experiment-view-compare-runs-card"]').first();
  const cards = [];
  for (const step of steps) {
    const input = card.locator('input[type=number]');
    await input.fill(String(step));
    await input.press('Enter');
    await card.locator('h4').click();  // leaving the box sets the step
    await card.locator('img').first().hover({ force: true }).catch(() => {});
    await page.mouse.move(0, 0);  // the run's params, shown over the image at first, go away
    await page.waitForTimeout(2500);
    cards.push((await card.screenshot()).toString('base64'));
  }
  const header = (await page.screenshot({ clip: { x: 200, y: 0, width: 1200, height: 200 } }))
    .toString('base64');

  await page.goto(`${runPage}/artifacts?workflowType=machine_learning`);
  await page.waitForTimeout(4000);
  await closeAssistant(page);
  await page.getByText('images', { exact: true }).first().click();
  await page.waitForTimeout(2000);
  const last = files.find((p) => stepOf(p) === steps[steps.length - 1]).split('/').pop();
  await page.getByText(last, { exact: true }).first().click();
  await page.waitForTimeout(3000);
  const artifacts = (await page.screenshot({ clip: { x: 200, y: 0, width: 1200, height: 560 } }))
    .toString('base64');

  const img = (b64) => `<img src="data:image/png;base64,${b64}">`;
  await page.setViewportSize({ width: 100 + 330 * cards.length, height: 400 });
  await page.setContent(`<html><body style="margin:12px;font:14px sans-serif;background:#fff">
    <div>${img(header)}</div>
    <div style="margin:6px 0">the run's <b>explanations</b> card, stepped through steps
      ${steps.join(', ')} (its slider and step box):</div>
    <div style="display:flex;gap:8px;align-items:flex-start">${cards.map(img).join('')}</div>
    <div style="margin:10px 0 6px">the last grid at full size (Artifacts tab, images/):</div>
    <div>${img(artifacts)}</div></body></html>`);
  await page.waitForTimeout(500);
  await page.screenshot({ path: out, fullPage: true });
  console.log(`${out}: steps ${steps.join(', ')}`);
  await browser.close();
})().catch((e) => { console.error(e); process.exit(1); });
