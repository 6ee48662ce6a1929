// Screenshot of a page in headless Chromium, as a person would see it: how docs/mlflow_runs.png
// was taken (docs/tracking.md).
//   NODE_PATH=<folder with playwright-core> node docs/screenshot.js URL OUT.png "text to wait for"
// Needs Node, the playwright-core package and a Chromium (CHROMIUM, default /usr/bin/chromium).
const { chromium } = require('playwright-core');

(async () => {
  const [url, out, waitFor] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = await (await browser.newContext({ viewport: { width: Number(process.env.WIDTH || 1600), height: Number(process.env.HEIGHT || 560) } })).newPage();
  await page.goto(url);
  if (waitFor) await page.waitForSelector(`text=${waitFor}`, { timeout: 60000 });
  await page.waitForTimeout(2000);
  // MLflow 3.17's assistant side panel opens by default and takes a third of the width: close it
  // (its close button is the last icon on the panel's title row)
  const title = page.locator('text=MLflow Assistant');
  if (await title.count()) {
    const box = await title.first().boundingBox();
    const row = [];
    for (const button of await page.locator('button').all()) {
      const b = await button.boundingBox();
      if (b && box && Math.abs(b.y + b.height / 2 - (box.y + box.height / 2)) < 12 && b.x > box.x) row.push([b.x, button]);
    }
    row.sort((a, b) => a[0] - b[0]);
    if (row.length) await row[row.length - 1][1].click({ timeout: 3000 }).catch(() => {});
    await page.waitForTimeout(1000);
  }
  console.log(page.url());
  await page.screenshot({ path: out });
  await browser.close();
})().catch((e) => { console.error(e); process.exit(1); });
