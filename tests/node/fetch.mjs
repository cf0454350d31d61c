// Fetch a URL with Node's built-in fetch and print the status and body as JSON.
const [url, method = "GET", body] = process.argv.slice(2);
const res = await fetch(url, { method, body, headers: body ? { "content-type": "application/json" } : {} });
console.log(JSON.stringify({ status: res.status, body: await res.text() }));
