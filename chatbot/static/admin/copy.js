// Copy buttons: a button with data-copy="<id of an element>" puts the element's text on the clipboard
// and says so. A page without a secure context (plain http to another host) copies the old way.
function copyBySelecting(element) {
  const range = document.createRange();
  range.selectNodeContents(element);
  window.getSelection().removeAllRanges();
  window.getSelection().addRange(range);
  document.execCommand("copy");
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) {
    return;
  }
  const source = document.getElementById(button.dataset.copy);
  const copied = () => { button.textContent = "Copied"; };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(source.textContent.trim()).then(copied, () => { copyBySelecting(source); copied(); });
  } else {
    copyBySelecting(source);
    copied();
  }
});
