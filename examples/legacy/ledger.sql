-- The ledger's database on net1 (the mixed legacy site). Loaded into an existing database (no
-- CREATE DATABASE / USE), e.g. `mariadb ledger < ledger.sql`.
DROP TABLE IF EXISTS entries;
DROP TABLE IF EXISTS accounts;

CREATE TABLE accounts (
  id INT PRIMARY KEY,
  code VARCHAR(20) NOT NULL UNIQUE,
  name VARCHAR(100) NOT NULL,
  kind ENUM('asset', 'liability', 'income', 'expense') NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE entries (
  id INT PRIMARY KEY AUTO_INCREMENT,
  account_id INT NOT NULL,
  booked_on DATE NOT NULL,
  amount DECIMAL(12, 2) NOT NULL,
  memo VARCHAR(200) NOT NULL DEFAULT '',
  FOREIGN KEY (account_id) REFERENCES accounts (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

INSERT INTO accounts (id, code, name, kind) VALUES
  (1, '1000', 'Cash', 'asset'),
  (2, '1200', 'Bank – current account', 'asset'),
  (3, '2100', 'Supplier credit', 'liability'),
  (4, '4000', 'Sales', 'income'),
  (5, '6100', 'Rent', 'expense');

INSERT INTO entries (account_id, booked_on, amount, memo) VALUES
  (1, '2024-01-01', 1200.00, 'Opening balance'),
  (2, '2024-01-15', -310.50, 'Card fees'),
  (4, '2024-01-28', 4420.10, 'January sales'),
  (5, '2024-02-01', -950.00, 'Rent, February'),
  (3, '2024-02-10', -120.00, 'Paper and toner'),
  (4, '2024-02-27', 3980.75, 'February sales'),
  (2, '2024-03-03', 15.20, 'Interest'),
  (1, '2024-03-31', -75.00, 'Petty cash: café');
