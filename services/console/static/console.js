// Draws each aging report's bar chart from the data its canvas carries (the table next
// to it has the same numbers, for screen readers and when scripts are off).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  if (typeof Chart === "undefined") return;
  document.querySelectorAll("canvas.aging-chart").forEach(function (canvas) {
    var labels = JSON.parse(canvas.dataset.labels);
    var values = JSON.parse(canvas.dataset.values).map(Number);
    var locale = document.documentElement.lang || undefined;
    var money = new Intl.NumberFormat(locale, { style: "currency", currency: canvas.dataset.currency });
    new Chart(canvas, {
      type: "bar",
      data: {
        labels: labels,
        datasets: [{ label: "Open " + canvas.dataset.currency, data: values,
                     backgroundColor: ["#2b6cb0", "#d69e2e", "#dd6b20", "#c53030", "#742a2a"] }]
      },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        plugins: { legend: { display: false },
                   tooltip: { callbacks: { label: function (c) { return money.format(c.parsed.y); } } } },
        scales: { y: { beginAtZero: true, ticks: { callback: function (v) { return money.format(v); } } } }
      }
    });
  });
});
