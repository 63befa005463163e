// Drives the mu-server's dashboard in Debian's chromium (playwright-core), for
// tests/it/dashboard.rs: node drive.mjs <controller URL> <token> <user path> <destination>
// <artefact directory>. Prints one line per step ("STEP …"); the test acts on some of them
// (a tunnel is started once the user exists). Exits 0 when every check held, else prints
// "FAIL …" and exits 1.
import { chromium } from 'playwright-core';

const [url, token, path, dst, out] = process.argv.slice(2);
const origin = new URL(url).origin;
const step = (s) => console.log('STEP ' + s);
const fail = (s) => { throw new Error(s); };

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-default-apps',
    '--disable-sync',
    '--no-first-run',
    '--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication',
    // No name resolves: nothing leaves loopback, whatever the page asked for.
    '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
  ],
});

// Every request the pages make, and every complaint (a CSP violation is one).
const requests = [];
const problems = [];
function watch(page) {
  page.on('request', (r) => requests.push({ url: r.url(), auth: r.headers()['authorization'] || null }));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(m.text()); });
  page.on('pageerror', (e) => problems.push(String(e)));
  page.on('dialog', (d) => d.accept());
  page.setDefaultTimeout(20000);
}

async function text(page, sel) {
  return (await page.locator(sel).first().textContent()) || '';
}

try {
  // A wrong token is refused and not kept.
  const wrong = await browser.newContext();
  const w = await wrong.newPage();
  watch(w);
  await w.goto(url);
  await w.fill('#token', 'not-the-token');
  await w.click('#login-form button[type=submit]');
  await w.waitForFunction(() => document.querySelector('#login-error').textContent.includes('refused'));
  if (!(await w.isHidden('#app'))) fail('the app opened with a wrong token');
  if (await w.evaluate(() => sessionStorage.length) !== 0) fail('a wrong token was kept');
  step('wrong token refused');
  await wrong.close();

  const ctx = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const page = await ctx.newPage();
  watch(page);
  await page.goto(url);
  await page.fill('#token', token);
  await page.click('#login-form button[type=submit]');
  await page.waitForSelector('#app:not([hidden])');
  // Kept in this tab: a reload stays logged in.
  await page.reload();
  await page.waitForSelector('#app:not([hidden])');
  step('logged in');

  // Add the user through the form.
  await page.click('#add');
  await page.fill('#edit-form [name=path]', path);
  await page.fill('#edit-form [name=dst]', dst);
  await page.click('#save');
  const row = page.locator(`tr[data-path="${path}"]`);
  await row.waitFor();
  if ((await text(page, `tr[data-path="${path}"] .state`)) !== 'active') fail('a new user is not active');
  step('added');

  // The test starts a tunnel now: its bytes rise in the table.
  await page.waitForFunction((p) => {
    const cell = document.querySelector(`tr[data-path="${p}"] td.total`);
    return cell && /^[1-9]/.test(cell.textContent) && !cell.textContent.startsWith('0 B ↑');
  }, path, { timeout: 30000 });
  await page.waitForFunction((p) => {
    const cell = document.querySelector(`tr[data-path="${p}"] td.now`);
    return cell && !cell.textContent.startsWith('0 B/s ↑');
  }, path, { timeout: 30000 });
  step('bytes rising: ' + (await text(page, `tr[data-path="${path}"] td.total`)));
  // The chart draws the user's series when its path is picked.
  await page.click(`tr[data-path="${path}"] td.path`);
  await page.waitForFunction((p) => document.querySelector('#chart-who').textContent.includes(p), path);
  await page.waitForSelector('#chart canvas');
  await page.screenshot({ path: out + '/dashboard.png', fullPage: true });

  // A quota smaller than what it moved: the state changes, and the tunnel ends.
  await row.locator('button[name=edit]').click();
  await page.fill('#edit-form [name=quota]', '1M');
  await page.click('#save');
  await page.waitForFunction((p) => {
    const s = document.querySelector(`tr[data-path="${p}"] .state`);
    return s && s.textContent === 'over quota';
  }, path);
  const quota = await text(page, `tr[data-path="${path}"] td.quota`);
  if (!quota.includes('of 1.00 MiB')) fail('the quota cell says: ' + quota);
  step('over quota');

  // A phone's width: no sideways scrolling, every user a card.
  await page.setViewportSize({ width: 375, height: 800 });
  const wide = await page.evaluate(() => document.documentElement.scrollWidth);
  if (wide > 376) fail('at 375 px the page is ' + wide + ' px wide');
  await page.screenshot({ path: out + '/dashboard-phone.png', fullPage: true });
  await page.setViewportSize({ width: 1200, height: 900 });
  step('phone width fits');

  // Kick: the user goes, with its tunnels.
  await row.locator('button[name=kick]').click();
  await row.waitFor({ state: 'detached' });
  step('kicked');

  // The token went only to this origin, and nothing went anywhere else.
  const withToken = requests.filter((r) => r.auth);
  if (withToken.length < 3) fail('the API was hardly used: ' + withToken.length + ' requests with the token');
  for (const r of requests) {
    if (new URL(r.url).origin !== origin) fail('a request left the origin: ' + r.url);
  }
  for (const r of withToken) {
    if (r.auth !== 'Bearer ' + token && r.auth !== 'Bearer not-the-token') fail('odd Authorization: ' + r.auth);
  }
  // The 401 of the wrong token is the one expected error.
  const unexpected = problems.filter((p) => !p.includes('401'));
  if (unexpected.length) fail('the page complained: ' + unexpected.join(' | '));
  step('token stayed home: ' + withToken.length + ' requests, ' + requests.length + ' in all');
  console.log('DONE');
  await browser.close();
  process.exit(0);
} catch (e) {
  console.log('FAIL ' + (e && e.stack ? e.stack : e));
  await browser.close();
  process.exit(1);
}
