// Draws the admin dashboard's charts from the page's JSON island (#dashboard-data) with Chart.js.
// Loaded as a file, never inline: the dashboard's Content-Security-Policy runs only our own scripts.
(function () {
  "use strict";

  var island = document.getElementById("dashboard-data");
  if (!island || typeof Chart === "undefined") {
    return;
  }
  var data = JSON.parse(island.textContent);

  // The same colours as the status badges: green went well, red failed, amber held back, grey waits.
  var OUTCOME_COLOURS = {
    answered: "#28a745",
    failed: "#dc3545",
    undelivered: "#8b0000",
    rate_limited: "#ffc107",
    refused: "#fd7e14",
    waiting: "#6c757d"
  };

  function openLink(link) {
    if (link) {
      window.location.href = link;
    }
  }

  function seconds(milliseconds) {
    return milliseconds === null ? null : milliseconds / 1000;
  }

  function draw(id, config) {
    var canvas = document.getElementById(id);
    if (canvas) {
      config.options = Object.assign({animation: false, maintainAspectRatio: false, responsive: true},
                                     config.options || {});
      new Chart(canvas, config);
    }
  }

  var outcomes = Object.keys(data.outcomes);
  draw("chart-outcomes", {
    type: "bar",
    data: {
      labels: data.labels,
      datasets: outcomes.map(function (outcome) {
        return {label: outcome.replace("_", "-"), data: data.outcomes[outcome].counts,
                backgroundColor: OUTCOME_COLOURS[outcome]};
      })
    },
    options: {
      scales: {x: {stacked: true, title: {display: true, text: data.zone}},
               y: {stacked: true, beginAtZero: true, ticks: {precision: 0}}},
      // A bar opens the messages behind its outcome in its own hour or day.
      onClick: function (event, elements) {
        if (elements.length) {
          openLink(data.outcomes[outcomes[elements[0].datasetIndex]].bucket_links[elements[0].index]);
        }
      }
    }
  });

  var times = data.reply_times;
  draw("chart-reply-times", {
    type: "line",
    data: {
      labels: data.labels,
      datasets: [
        {label: "end to end p50", data: times.end_to_end_p50.map(seconds), borderColor: "#007bff"},
        {label: "end to end p95", data: times.end_to_end_p95.map(seconds), borderColor: "#007bff", borderDash: [6, 4]},
        {label: "AI p50", data: times.ai_p50.map(seconds), borderColor: "#6f42c1"},
        {label: "AI p95", data: times.ai_p95.map(seconds), borderColor: "#6f42c1", borderDash: [6, 4]}
      ]
    },
    options: {
      // An hour with no answer has no time (null): the line breaks there rather than join the hours
      // on either side, which would draw times nobody waited.
      spanGaps: false,
      scales: {x: {title: {display: true, text: data.zone}},
               y: {beginAtZero: true, title: {display: true, text: "seconds"}}}
    }
  });

  draw("chart-errors", {
    type: "bar",
    data: {
      labels: data.errors.map(function (error) { return error.label; }),
      datasets: [{label: "errors", data: data.errors.map(function (error) { return error.count; }),
                  backgroundColor: "#dc3545"}]
    },
    options: {
      indexAxis: "y",
      plugins: {legend: {display: false}},
      scales: {x: {beginAtZero: true, ticks: {precision: 0}}},
      onClick: function (event, elements) {
        if (elements.length) {
          openLink(data.errors[elements[0].index].link);
        }
      }
    }
  });

  draw("chart-models", {
    type: "bar",
    data: {
      labels: data.models.map(function (use) { return use.model; }),
      datasets: [
        {label: "tokens in", data: data.models.map(function (use) { return use.prompt_tokens; }),
         backgroundColor: "#17a2b8"},
        {label: "tokens out", data: data.models.map(function (use) { return use.completion_tokens; }),
         backgroundColor: "#20c997"}
      ]
    },
    options: {
      scales: {x: {stacked: true}, y: {stacked: true, beginAtZero: true}},
      onClick: function () { openLink(data.models_link); }
    }
  });
})();
