// How docs/serving_registry.png was taken (docs/serving.md): the MLflow UI's model registry after
// `dvc repro`, in headless Chromium. Top: the registered model's page (its versions, their tags
// and aliases); bottom: the champion version's page (its source run, the run that made it, and its
// tags). The two screenshots are laid out on one page and that page is the output.
//   mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db --host 127.0.0.1 --port 5055 &
//   NODE_PATH=<folder with playwright-core> node docs/serving_screenshot.js http://127.0.0.1:5055 \
//     xai-vibi docs/serving_registry.png
// Needs Node, the playwright-core package and a Chromium (CHROMIUM, default /usr/bin/chromium).
const { chromium } = require('playwright-core');

async function closeAssistant(page) {
  // MLflow 3.17's assistant side panel opens by default and takes a third of the width
  for (const b of await page.locator('button[aria-label*="lose"]').all()) {
    await b.click({ timeout: 2000 }).catch(() => {});
  }
}

(async () => {
  const [base, name, out] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = await (await browser.newContext({ viewport: { width: 1500, height: 900 } })).newPage();
  const alias = await (await page.request.get(
    `${base}/ajax-api/2.0/mlflow/registered-models/alias?name=${name}&alias=champion`)).json();
  if (!alias.model_version) throw new Error(`${name} has no champion: ${JSON.stringify(alias)}`);
  const version = alias.model_version.version;
  const ml = 'workflowType=machine_learning';

  await page.goto(`${base}/#/models/${name}?${ml}`);
  await page.waitForSelector(`text=Version ${version}`, { timeout: 60000 });
  await page.waitForTimeout(2000);
  await closeAssistant(page);
  const versions = page.getByText('Versions', { exact: true }).first();
  const top = (await page.getByText(name, { exact: true }).first().boundingBox()).y - 50;
  const table = await page.locator('table, [role="table"]').last().boundingBox();
  const bottom = table ? table.y + table.height + 10 : (await versions.boundingBox()).y + 400;
  const model = (await page.screenshot({ clip: { x: 196, y: Math.max(top, 0), width: 1300,
                                                   height: Math.min(bottom, 900) - Math.max(top, 0) } }))
    .toString('base64');

  await page.goto(`${base}/#/models/${name}/versions/${version}?${ml}`);
  await page.waitForSelector('text=Source Run', { timeout: 60000 });
  await page.waitForTimeout(2000);
  await closeAssistant(page);
  const run = await page.getByText('Source Run').first().boundingBox();
  const start = Math.max(run.y - 80, 0);
  const detail = (await page.screenshot({ clip: { x: 196, y: start, width: 1300,
                                                    height: run.y + 60 - start } }))
    .toString('base64');

  const img = (b64) => `<img src="data:image/png;base64,${b64}">`;
  await page.setViewportSize({ width: 1360, height: 400 });
  await page.setContent(`<html><body style="margin:12px;font:14px sans-serif;background:#fff">
    <div style="margin:0 0 6px">the registered model <b>${name}</b>: its versions, their tags and
      aliases</div><div>${img(model)}</div>
    <div style="margin:12px 0 6px">version ${version}, the <b>champion</b>: its source run (a link
      to the <code>train_vibi</code> run that made it), its logged model and its alias</div>
    <div>${img(detail)}</div></body></html>`);
  await page.waitForTimeout(500);
  await page.screenshot({ path: out, fullPage: true });
  console.log(`${out}: ${name} version ${version}`);
  await browser.close();
})().catch((e) => { console.error(e); process.exit(1); });
