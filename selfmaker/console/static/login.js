// The console's sign-in: posts the key as JSON, then opens the console (the answer sets an HttpOnly cookie).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("login");
  const error = document.getElementById("error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const body = JSON.stringify({
      access_key_id: document.getElementById("access_key_id").value,
      secret_access_key: document.getElementById("secret_access_key").value,
    });
    let answer;
    try {
      answer = await fetch("/console/login", {
        method: "POST", body, headers: { "Content-Type": "application/json" }, credentials: "same-origin",
      });
    } catch (e) {
      error.textContent = "The platform did not answer.";
      return;
    }
    if (answer.ok) {
      window.location.assign("/console");
      return;
    }
    const doc = await answer.json().catch(() => ({}));
    error.textContent = doc.message || `Sign-in refused (${answer.status}).`;
  });
});
