/**
 * URLs as Cairn shows them: in build logs, error messages and their details,
 * progress lines and `catalog list`. Build logs are world-readable and travel
 * with sync and export, so a URL's secrets (user info, query values, the
 * fragment) are replaced by `***`; the scheme, host, port, path and query
 * keys stay, which is what a reader needs to tell mirrors apart. Identity
 * (the DRef) never uses this: a config is hashed as given.
 */

const MASK = '***';

/**
 * `https://user:pass@host/p?token=s&x` -> `https://***@host/p?token=***&x`.
 * Pure. Text that does not parse as a URL with an authority is returned
 * with only what looks like user info and a query masked.
 */
export function redactUrl(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return redactLoose(url);
  }
  // Opaque URLs (apt:pkg=1.0, data:...) carry no user info or query to hide
  // beyond what the generic rule below catches. A special scheme needs no
  // '//' to have an authority: fetch takes `https:u:p@host/x` as `https://u:p@host/x`.
  if (!url.includes('//') && u.host === '') return redactLoose(url);
  const userInfo = u.username !== '' || u.password !== '' ? `${MASK}@` : '';
  const query = u.search === '' ? '' : `?${redactQuery(u.search.slice(1))}`;
  const fragment = u.hash === '' ? '' : `#${MASK}`;
  return `${u.protocol}//${userInfo}${u.host}${u.pathname}${query}${fragment}`;
}

/** Every `key=value` keeps its key; a bare key (`?flag`) is kept as is. */
function redactQuery(q: string): string {
  return q
    .split('&')
    .map((p) => {
      const eq = p.indexOf('=');
      return eq < 0 ? p : `${p.slice(0, eq)}=${MASK}`;
    })
    .join('&');
}

function redactLoose(text: string): string {
  const at = /^([a-z][a-z0-9+.-]*:\/\/)[^/?#@]*@/i;
  let s = text.replace(at, `$1${MASK}@`);
  const q = s.search(/[?#]/);
  if (q >= 0) {
    const hash = s.indexOf('#', q);
    const query = s.slice(q + 1, hash < 0 ? undefined : hash);
    s = `${s.slice(0, q)}${s[q] === '?' ? `?${redactQuery(query)}` : ''}${hash < 0 ? '' : `#${MASK}`}`;
  }
  return s;
}

/**
 * Masks every `scheme://...` URL inside free text, such as an HTTP
 * library's error message that quotes the URL it was given.
 */
export function redactUrlsIn(text: string): string {
  // The second form: a special scheme with user info but no '//' (see redactUrl).
  return text.replace(/\b[a-z][a-z0-9+.-]*:\/\/[^\s'"<>`]+|\b(?:https?|ftp|wss?):[^\s'"<>`@]*@[^\s'"<>`]*/gi, (m) =>
    redactUrl(m),
  );
}
