// Draws the Campaigns page's chart from its JSON island (#campaigns-data) with Chart.js: each campaign's
// recipients by how far their message got. Loaded as a file, never inline: the page's Content-Security-Policy
// runs only our own scripts.
(function () {
  "use strict";

  var island = document.getElementById("campaigns-data");
  var canvas = document.getElementById("chart-campaigns");
  if (!island || !canvas || typeof Chart === "undefined") {
    return;
  }
  var data = JSON.parse(island.textContent);
  // The status badges' colours: green arrived, grey on its way, red failed.
  var PARTS = [
    {key: "read", label: "read", colour: "#1e7e34"},
    {key: "delivered", label: "delivered", colour: "#28a745"},
    {key: "sent", label: "sent, no receipt yet", colour: "#17a2b8"},
    {key: "failed", label: "failed", colour: "#dc3545"},
    {key: "queued", label: "queued", colour: "#6c757d"}
  ];

  new Chart(canvas, {
    type: "bar",
    data: {
      labels: data.labels,
      datasets: PARTS.map(function (part) {
        return {label: part.label, data: data.parts[part.key], backgroundColor: part.colour};
      })
    },
    options: {
      animation: false,
      maintainAspectRatio: false,
      responsive: true,
      indexAxis: "y",
      scales: {x: {stacked: true, beginAtZero: true, ticks: {precision: 0},
                   title: {display: true, text: "recipients"}},
               y: {stacked: true}}
    }
  });
}());
