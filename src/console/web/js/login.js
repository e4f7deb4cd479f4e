// The sign-in page: exchanges a token for a session cookie, then opens the console.
import { api } from "./api.js";

const form = document.getElementById("login-form");
const failure = document.getElementById("login-error");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  failure.hidden = true;
  try {
    await api("POST", "login", { token: document.getElementById("token").value });
    window.location.assign("/console/");
  } catch (e) {
    failure.textContent = `Sign-in refused: ${e.message}`;
    failure.hidden = false;
  }
});
