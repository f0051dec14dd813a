// The legacy shop's cart: counts clicks, keeps them in localStorage.
document.querySelectorAll("button").forEach((b) => b.addEventListener("click", () => {
  const n = Number(localStorage.getItem("cart") || 0) + 1;
  localStorage.setItem("cart", String(n));
}));
