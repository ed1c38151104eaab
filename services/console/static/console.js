// Draws each report's bar chart from the data its canvas carries (the table next to it
// has the same numbers, for screen readers and when scripts are off).
//   data-labels:   the bars' labels (JSON list)
//   data-datasets: [{"label": ..., "values": [exact decimal strings or counts]}]
//   data-currency: when set, values are amounts in that currency
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  if (typeof Chart === "undefined") return;
  var colours = ["#2b6cb0", "#c05621", "#276749", "#9b2c2c", "#553c9a"];
  var locale = document.documentElement.lang || undefined;
  document.querySelectorAll("canvas.report-chart").forEach(function (canvas) {
    var currency = canvas.dataset.currency;
    var format = currency
      ? new Intl.NumberFormat(locale, { style: "currency", currency: currency }).format
      : new Intl.NumberFormat(locale, { maximumFractionDigits: 0 }).format;
    var datasets = JSON.parse(canvas.dataset.datasets).map(function (d, i) {
      return { label: d.label, data: d.values.map(Number), backgroundColor: colours[i % colours.length] };
    });
    new Chart(canvas, {
      type: "bar",
      data: { labels: JSON.parse(canvas.dataset.labels), datasets: datasets },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        plugins: {
          legend: { display: datasets.length > 1 },
          tooltip: { callbacks: { label: function (c) { return c.dataset.label + ": " + format(c.parsed.y); } } }
        },
        scales: { y: { beginAtZero: true, ticks: { callback: function (v) { return format(v); } } } }
      }
    });
  });
});
