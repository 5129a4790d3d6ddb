# Golden values from R's survival::coxph for tests/test_survival_engine.py (the tests do not need R).
#
# Regenerate (Debian: apt-get install -y r-base-core r-cran-survival), from the repository root:
#   .venv/bin/python tests/data/survival/make_inputs.py    # rossi.csv (lifelines' copy), synthetic.csv (seeded)
#   Rscript tests/data/survival/make_golden.R              # writes golden.csv next to this script
#
# golden.csv is long: case, quantity, name, value (17 significant digits). Quantities per case:
#   coef, se              per covariate: coef(fit), sqrt(diag(fit$var)) (the inverse information; for ridge the
#                         penalised information, i.e. print's "se(coef)")
#   loglik                name "null" / "fit": fit$loglik (without the penalty for ridge)
#   penalty               ridge only: fit$penalty[2]
#   concordance           name "C": concordance(fit)$concordance (Harrell's C of the linear predictor)
#   means                 per covariate: fit$means (the centring of the linear predictor and of the baseline)
#   surv_means, surv_row1 name = time: survfit(fit, newdata = <the covariate means> / <row 1 of the data>)
#                         evaluated with summary(..., times = ...): S(t) = exp(-H(t)), H the Efron (ties="efron")
#                         or Breslow (ties="breslow") cumulative hazard (survfit's default ctype/stype for the fit)
#   n_iter                name "iter": fit$iter
# Ridge: coxph(Surv(t, e) ~ ridge(x1, ..., theta = n * lambda, scale = TRUE)) maximises
#   loglik - theta/2 * sum(var(x_j) * beta_j^2) = loglik - lambda * n / 2 * sum((sd_j * beta_j)^2),
# the objective of learnpulse's CoxPH(penalizer = lambda) and of lifelines' CoxPHFitter(penalizer = lambda).
suppressPackageStartupMessages(library(survival))

args <- commandArgs(trailingOnly = FALSE)
script <- sub("^--file=", "", args[grep("^--file=", args)])
here <- if (length(script)) dirname(normalizePath(script)) else "."

out <- list()
add <- function(case, quantity, name, value) {
  out[[length(out) + 1]] <<- data.frame(case = case, quantity = quantity, name = as.character(name),
                                        value = sprintf("%.17g", as.numeric(value)))
}

record <- function(case, fit, data, covs, times, ridge = FALSE) {
  add(case, "coef", covs, coef(fit))
  add(case, "se", covs, sqrt(diag(fit$var)))
  add(case, "loglik", c("null", "fit"), fit$loglik)
  add(case, "concordance", "C", concordance(fit)$concordance)
  add(case, "means", covs, fit$means)
  add(case, "n_iter", "iter", fit$iter[length(fit$iter)])
  if (ridge) {
    add(case, "penalty", "penalty", fit$penalty[length(fit$penalty)])
    return(invisible(NULL))
  }
  means <- as.data.frame(as.list(colMeans(data[, covs])))
  s <- summary(survfit(fit, newdata = means), times = times, extend = TRUE)
  add(case, "surv_means", s$time, s$surv)
  s1 <- summary(survfit(fit, newdata = data[1, covs, drop = FALSE]), times = times, extend = TRUE)
  add(case, "surv_row1", s1$time, s1$surv)
}

ctl <- coxph.control(eps = 1e-9, iter.max = 50)

rossi <- read.csv(file.path(here, "rossi.csv"))
rcovs <- c("fin", "age", "race", "wexp", "mar", "paro", "prio")
rtimes <- c(1, 8, 20, 30.5, 40, 52)
for (ties in c("efron", "breslow")) {
  fit <- coxph(Surv(week, arrest) ~ fin + age + race + wexp + mar + paro + prio, data = rossi, ties = ties,
               control = ctl)
  record(paste0("rossi_", ties), fit, rossi, rcovs, rtimes)
}

syn <- read.csv(file.path(here, "synthetic.csv"))
scovs <- c("x1", "x2", "x3", "x4")
stimes <- c(1, 2, 5, 10, 20, 40, 60)
for (ties in c("efron", "breslow")) {
  fit <- coxph(Surv(time, status) ~ x1 + x2 + x3 + x4, data = syn, ties = ties, control = ctl)
  record(paste0("synthetic_", ties), fit, syn, scovs, stimes)
}

# ridge: lambda = 0.05 per row on the per-SD coefficients
lambda <- 0.05
theta <- lambda * nrow(rossi)
fit <- coxph(Surv(week, arrest) ~ ridge(fin, age, race, wexp, mar, paro, prio, theta = theta, scale = TRUE),
             data = rossi, ties = "efron", control = ctl)
record("rossi_ridge_0.05", fit, rossi, rcovs, rtimes, ridge = TRUE)

golden <- do.call(rbind, out)
write.csv(golden, file.path(here, "golden.csv"), row.names = FALSE, quote = FALSE)
cat("wrote", nrow(golden), "values to", file.path(here, "golden.csv"), "\n")
cat(R.version.string, "survival", as.character(packageVersion("survival")), "\n")
